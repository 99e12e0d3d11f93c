//! What every fault scenario runs on: the test kit's replica harness.

pub use leaderelection_testkit::replica::{
    check, paused, wait_until, Backend, Election, Link, Memory, Replica, Timing, Work,
};
