//! The JSON Schema of the scenario format, generated from the model's types and doc comments.
//! `scenarios/schema.json` is its committed copy (a test keeps the two equal); regenerate it with
//! `cargo run -p harness --bin miglab -- schema > scenarios/schema.json`.

use super::model::Scenario;

/// The JSON Schema of a scenario file.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(Scenario);
    schema.insert("$id".into(), "https://example.invalid/miglab/scenarios/schema.json".into());
    schema.insert("title".into(), "miglab scenario".into());
    schema.to_value()
}

/// The schema as `scenarios/schema.json` holds it: pretty-printed, with a final newline.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}
