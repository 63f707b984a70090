//! The Lambda emulator harness: a function binary built by cargo-lambda answers invokes
//! with the environment it was given, and reports a function error as Lambda does.

use e2e_tests::lambda_watch::LambdaWatch;
use serde_json::json;

#[tokio::test]
async fn invokes_a_function_binary_with_its_environment() {
    let watch = LambdaWatch::start(&[("ECHO_NOTE", "from the harness")]).await;

    let answer = watch
        .invoke("echo_lambda", json!({"points": 50, "member": "m-1"}))
        .await;
    assert_eq!(
        answer["payload"],
        json!({"points": 50, "member": "m-1"}),
        "{answer}"
    );
    assert_eq!(answer["note"], "from the harness", "{answer}");
    let first_request = answer["request_id"].as_str().unwrap().to_string();
    assert!(!first_request.is_empty());

    // The same instance serves the next invoke, with a new request id.
    let again = watch.invoke("echo_lambda", json!({"n": 2})).await;
    assert_eq!(again["payload"], json!({"n": 2}));
    assert_ne!(again["request_id"].as_str().unwrap(), first_request);

    let failed = watch.invoke("echo_lambda", json!({"fail": true})).await;
    assert_eq!(failed["errorMessage"], "asked to fail", "{failed}");
}
