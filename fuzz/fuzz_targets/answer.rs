//! What every API server target asserts of the answer to a request body.

use leaderelection_testkit::apiserver::fuzzing::Answer;

/// A body is taken (200 or 201) or refused as the client's fault (4xx); a 5xx is the
/// server's fault, unless kube-apiserver answers the same request with it.
pub fn check(answer: Answer) {
    match answer {
        Ok(code) => assert!(matches!(code, 200 | 201), "success with {code}"),
        Err(refused) => assert!(
            (400..500).contains(&refused.code) || refused.kube_apiserver_answers_500(),
            "{} {}: {}",
            refused.code,
            refused.reason,
            refused.message
        ),
    }
}
