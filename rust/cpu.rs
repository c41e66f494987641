//! The instruction-set level of the CPU, detected once.
//!
//! The crate is built for the baseline of its target (SSE2 on x86-64); its
//! hot loops are compiled again for wider vectors and one of the versions is
//! picked at run time. Every such choice asks [`level`], so all of them agree
//! for the life of the process: the same kernel for every block and every
//! thread, hence results that do not depend on the thread count.

use std::sync::OnceLock;

/// The widest instruction set the hot loops may use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CpuLevel {
    /// Baseline code only (any target).
    Portable,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512 F, VL, BW and DQ, AVX2 and FMA.
    Avx512,
}

impl CpuLevel {
    /// What this CPU supports (not cached; see [`level`]).
    fn detect() -> CpuLevel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
                return CpuLevel::Avx512;
            }
            if avx2 {
                return CpuLevel::Avx2;
            }
        }
        CpuLevel::Portable
    }

    /// Every level this CPU runs, narrowest first (tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<CpuLevel> {
        [CpuLevel::Portable, CpuLevel::Avx2, CpuLevel::Avx512]
            .into_iter()
            .filter(|&l| l <= level())
            .collect()
    }
}

/// This CPU's level, detected on the first call.
#[inline]
pub(crate) fn level() -> CpuLevel {
    static LEVEL: OnceLock<CpuLevel> = OnceLock::new();
    *LEVEL.get_or_init(CpuLevel::detect)
}
