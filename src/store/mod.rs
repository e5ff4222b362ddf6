//! Where bundles end up. A bundle is first written into a staging directory; the store then makes
//! it visible in one step and never overwrites an existing capture. `fs` is the local directory
//! store (`collect --out`, `demo`).

pub mod fs;

pub use fs::{FsStore, StoreError};
