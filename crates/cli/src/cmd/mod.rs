pub mod bench;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod predict;
pub mod report;
pub mod train;
