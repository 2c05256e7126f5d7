//! Sample devices served by the `vfu-server` binary.
pub mod dma_engine;
pub mod lvu_sample;
