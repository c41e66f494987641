//! The plain assignment step (every point against every centroid), and the
//! final step of a run, which also sums the inertia of its labels from each
//! block of rows while the block is still in cache.

use rayon::prelude::*;

use crate::kernels::argmin::{argmin_rows, Packed};
use crate::kernels::screen::{QuantCache, Screen, ScreenWork};

use super::assign::GROUP_BLOCK;
use super::sums::{block_inertia, sum_parts, INERTIA_BLOCK};

// The fused inertia's parts are `exact_inertia`'s only if the blocks agree.
const _: () = assert!(GROUP_BLOCK == INERTIA_BLOCK);

/// The centroids of one plain step, packed for the fused kernel (and
/// quantized for the AMX screen when it runs).
struct PlainStep<'a> {
    x_norms: &'a [f32],
    quant: &'a QuantCache,
    packed: Packed,
    screen: Option<Screen>,
}

/// Work buffers of one thread of a plain step.
#[derive(Default)]
struct PlainWork {
    m1: Vec<f32>,
    screen: ScreenWork,
}

impl<'a> PlainStep<'a> {
    fn new(
        x_norms: &'a [f32],
        quant: &'a QuantCache,
        d: usize,
        c: &[f32],
        c_norms: &[f32],
    ) -> Self {
        PlainStep {
            x_norms,
            quant,
            packed: Packed::new(c, c_norms, d),
            screen: Screen::for_step(c, c_norms, d, quant.keeps()),
        }
    }

    /// Labels (`lb`) and squared distances (`db`) of block `b` of the
    /// points, whose rows are `xb`.
    fn block(&self, work: &mut PlainWork, b: usize, xb: &[f32], lb: &mut [u32], db: &mut [f32]) {
        let m = lb.len();
        work.m1.resize(m, 0.0);
        match &self.screen {
            Some(sc) => {
                sc.argmin_rows(
                    xb,
                    m,
                    &self.packed,
                    &mut work.m1,
                    lb,
                    &mut work.screen,
                    None,
                    self.quant.get(b, xb),
                );
            }
            None => argmin_rows(xb, m, &self.packed, &mut work.m1, None, lb),
        }
        let norms = &self.x_norms[b * GROUP_BLOCK..b * GROUP_BLOCK + m];
        for r in 0..m {
            db[r] = (norms[r] + work.m1[r]).max(0.0);
        }
    }
}

/// The plain assignment step: every point compared with every centroid by
/// the fused kernel ([`argmin_rows`], centroids packed once per step), whose
/// products are summed as [`assign_grouped`](super::assign::assign_grouped)'s,
/// so the labels and distances are those of a full grouped step bit for
/// bit. Ties go to the lowest index.
///
/// Where the CPU has AMX and `k` is large enough ([`Screen::for_step`]), an
/// exact integer screen picks the panels of centroids that can be nearest
/// and only those are computed, with the same bits; the rows it quantizes
/// for the screen are kept in `quant` for the run's next steps.
#[allow(clippy::too_many_arguments)]
pub(super) fn assign_plain(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    d: usize,
    c: &[f32],
    c_norms: &[f32],
    labels: &mut [u32],
    dists: &mut [f32],
) {
    plain_blocks(x, x_norms, quant, d, c, c_norms, labels, dists, |_, _| ());
}

/// [`assign_plain`], and the inertia of the labels it finds against the
/// same centroids `c`: [`exact_inertia`](super::sums::exact_inertia) bit for
/// bit (the same blocks, summed in the same order), without its pass over
/// the points.
#[allow(clippy::too_many_arguments)]
pub(super) fn assign_plain_inertia(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    d: usize,
    c: &[f32],
    c_norms: &[f32],
    labels: &mut [u32],
    dists: &mut [f32],
) -> f64 {
    let parts = plain_blocks(x, x_norms, quant, d, c, c_norms, labels, dists, |xb, lb| {
        block_inertia(xb, d, c, lb)
    });
    sum_parts(&parts)
}

/// The plain step over the blocks of [`GROUP_BLOCK`] rows, in parallel;
/// `then(rows, labels)` of each block once its labels are found, while its
/// rows are in cache, in block order.
#[allow(clippy::too_many_arguments)]
fn plain_blocks<R: Send>(
    x: &[f32],
    x_norms: &[f32],
    quant: &QuantCache,
    d: usize,
    c: &[f32],
    c_norms: &[f32],
    labels: &mut [u32],
    dists: &mut [f32],
    then: impl Fn(&[f32], &[u32]) -> R + Sync,
) -> Vec<R> {
    let step = PlainStep::new(x_norms, quant, d, c, c_norms);
    x.par_chunks(GROUP_BLOCK * d)
        .zip(labels.par_chunks_mut(GROUP_BLOCK))
        .zip(dists.par_chunks_mut(GROUP_BLOCK))
        .enumerate()
        .map_init(PlainWork::default, |work, (b, ((xb, lb), db))| {
            step.block(work, b, xb, lb, db);
            then(xb, lb)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::sums::exact_inertia;
    use crate::kmeans::tests::{hd_blobs, in_pool};
    use crate::linalg::row_sq_norms;

    /// `n` points near `k` centres in `d` dimensions, their squared norms,
    /// and `k` centroids (every `n / k`-th point, nudged).
    fn case(n: usize, d: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = hd_blobs(n.div_ceil(k), k, d, 4.0, false)[..n * d].to_vec();
        let c: Vec<f32> = (0..k)
            .flat_map(|j| {
                x[(j * n / k) * d..(j * n / k + 1) * d]
                    .iter()
                    .map(|v| v + 0.25)
            })
            .collect();
        let (xn, cn) = (row_sq_norms(&x, d), row_sq_norms(&c, d));
        (x, xn, c, cn)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_fused_inertia_is_exact_inertia_bit_for_bit() {
        let (d, k) = (24, 9);
        for n in [1, 255, 256, 257, 1000, 3 * GROUP_BLOCK + 17] {
            let (x, xn, c, cn) = case(n, d, k);
            let (mut l1, mut d1) = (vec![0u32; n], vec![0f32; n]);
            assign_plain(&x, &xn, &QuantCache::none(), d, &c, &cn, &mut l1, &mut d1);
            for threads in [1, 3] {
                let (mut l2, mut d2) = (vec![0u32; n], vec![0f32; n]);
                let inertia = in_pool(threads, || {
                    assign_plain_inertia(&x, &xn, &QuantCache::none(), d, &c, &cn, &mut l2, &mut d2)
                });
                assert_eq!((&l1, bits(&d1)), (&l2, bits(&d2)), "n = {n}");
                let want = exact_inertia(&x, d, &c, &l1);
                assert_eq!(inertia.to_bits(), want.to_bits(), "n = {n}");
                assert!(inertia > 0.0);
            }
        }
    }
}
