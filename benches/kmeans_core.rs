//! Criterion benches of the k-means core: the blockwise distance GEMM
//! (`dot_nt`) at the shapes k-means uses, one Lloyd run and k-means++.
//!
//! Run: `cargo bench --bench kmeans_core` (single shapes: append a filter,
//! e.g. `-- dot_nt/256x384x100`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protofast::kmeans::{kmeans, Init, KMeansParams};
use protofast::linalg::{dot_nt, ROW_BLOCK};
use protofast::rng::Rng;

const D: usize = 384;

/// Unit-norm points around `centers` random unit centres (noise norm 2).
fn unit_blobs(n: usize, centers: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut gauss = move || {
        let a = rng.next_f64().max(1e-300);
        let b = rng.next_f64();
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    };
    let normalize = |row: &mut [f32]| {
        let s = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= s);
    };
    let mut c: Vec<f32> = (0..centers * D).map(|_| gauss()).collect();
    c.chunks_mut(D).for_each(normalize);
    let scale = 2.0 / (D as f32).sqrt();
    let mut x = vec![0f32; n * D];
    for (i, row) in x.chunks_mut(D).enumerate() {
        let j = (i * 7919) % centers;
        for (t, v) in row.iter_mut().enumerate() {
            *v = c[j * D + t] + scale * gauss();
        }
        normalize(row);
    }
    x
}

fn bench_dot_nt(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("dot_nt");
    let a = unit_blobs(1024, 16, 1);
    let b = unit_blobs(1000, 16, 2);
    let mut shapes: Vec<(usize, usize)> = [5, 7, 8, 32, 100, 256, 1000]
        .iter()
        .map(|&k| (ROW_BLOCK, k))
        .collect();
    shapes.extend([(7, ROW_BLOCK), (512, 1000), (1024, 1000)]);
    for (m, n) in shapes {
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * D) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{D}x{n}")), |bch| {
            bch.iter(|| dot_nt(black_box(&a[..m * D]), m, &b[..n * D], n, D, &mut out))
        });
    }
    g.finish();
}

fn bench_kmeans(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("kmeans");
    g.sample_size(10);
    for (n, k) in [(10_000, 100), (20_000, 256)] {
        let x = unit_blobs(n, 4 * k, 3);
        let c0: Vec<f32> = (0..k)
            .flat_map(|j| x[(j * 37 % n) * D..(j * 37 % n + 1) * D].to_vec())
            .collect();
        let mut lloyd = KMeansParams::new(k);
        lloyd.init = Init::Given(c0);
        lloyd.max_iter = 20;
        lloyd.tol = 0.0;
        g.bench_function(BenchmarkId::new("lloyd20", format!("{n}x{D}x{k}")), |bch| {
            bch.iter(|| kmeans(black_box(&x), n, D, &lloyd))
        });
        let mut pp = KMeansParams::new(k);
        pp.max_iter = 0;
        g.bench_function(
            BenchmarkId::new("kmeans++", format!("{n}x{D}x{k}")),
            |bch| bch.iter(|| kmeans(black_box(&x), n, D, &pp)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_dot_nt, bench_kmeans);
criterion_main!(benches);
