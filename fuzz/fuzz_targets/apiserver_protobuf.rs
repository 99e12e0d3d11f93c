//! Any bytes as a Kubernetes protobuf request body to the test API server (a create,
//! an update or DeleteOptions, picked by the first byte with the kind): the server
//! answers with a success or a 4xx, never a panic or a 5xx of its own.
#![no_main]

mod answer;

use leaderelection_testkit::apiserver::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, body)) = data.split_first() {
        answer::check(fuzzing::protobuf(selector, body));
    }
});
