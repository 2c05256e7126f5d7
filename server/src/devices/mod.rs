//! Sample devices served by the `vfu-server` binary.
