//! The CIFAR-10 ResNet-9 and its training: network, schedule, LR range test,
//! training loop, checkpoints, plots.

pub mod batches;
pub mod checkpoint;
pub mod ema;
pub mod error;
pub mod eval;
pub mod graph;
pub mod image_grid;
pub mod lr_find;
pub mod pipeline;
pub mod plots;
pub mod profile;
pub mod resnet;
pub mod run;
pub mod saver;
pub mod schedule;
pub mod startup;
pub mod train;

pub use error::{Error, Result};
