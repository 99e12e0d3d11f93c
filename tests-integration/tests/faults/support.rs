//! What every fault scenario runs on: the test kit's replica harness.

pub use leaderelection_testkit::replica::{
    check, paused, Backend, Election, Link, Memory, Replica, Timing, Work,
};
