//! vitrine-train: the native side of vitrine: ImageFolder data and augmentation, the fine-tuning
//! loop with checkpoints and resume, evaluation, model bundles and reports.

pub mod adamw;
pub mod bundle;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod evaluate;
pub mod faithfulness;
pub mod logbook;
pub mod loss;
pub mod recipe;
pub mod report;
pub mod run_dir;
pub mod schedule;
pub mod setup;
pub mod trainer;
pub mod toy;
pub mod importance;
pub mod speed;
pub mod student;
pub mod progress;
pub mod distill;
pub mod patch_dropout;
