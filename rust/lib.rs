//! protofast's core: a label-embedding store, a deterministic parallel
//! k-means, a nearest-prototype lookup, stable label hashes and cluster
//! renumbering by maximum overlap, in plain Rust.
//!
//! Nothing here touches Python; the bindings live in `python` (behind the
//! `python` feature, which maturin enables) and only convert inputs, release
//! the GIL, call the core and convert outputs.

mod cpu;
pub mod error;
mod kernels;
pub mod kmeans;
pub mod label_hash;
pub mod labels;
pub mod linalg;
pub mod lookup;
pub mod matching;
pub mod parallel;
pub mod rng;
mod simd;
pub mod store;
pub mod targets;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use kernels::screen::{amx_enabled, set_amx};
pub use kmeans::{kmeans, kmeans_plusplus, Init, KMeansParams, KMeansResult};
pub use label_hash::{label_hash, label_hashes};
pub use lookup::{nearest_prototype, LookupMetric};
pub use matching::match_clusters;
pub use store::{LabelStore, StoreState};
