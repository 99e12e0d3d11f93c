//! Any bytes as a PATCH body to the test API server, the patch type (merge, strategic
//! merge, JSON patch, apply), the kind and the live object picked by the first byte:
//! the server answers with a success or a 4xx, never a panic or a 5xx of its own.
#![no_main]

mod answer;

use leaderelection_testkit::apiserver::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, body)) = data.split_first() {
        answer::check(fuzzing::patch(selector, body));
    }
});
