//! Smoke test of the test schema registry through schema_registry_converter: Confluent wire
//! format round trip, schema deduplication, and the unknown-id error path.

mod support;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_schema_by_id, get_schema_by_subject, SrSettings,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const STOCK_MOVE: &str = r#"{
  "type": "record",
  "name": "StockMove",
  "namespace": "synclag.test",
  "fields": [
    {"name": "move_id", "type": "string"},
    {"name": "qty", "type": "long"},
    {"name": "done", "type": "boolean"},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

fn settings() -> SrSettings {
    SrSettings::new(support::registry_url())
}

fn with_schema(topic: &str) -> SubjectNameStrategy {
    SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_owned(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, STOCK_MOVE.to_owned()),
    )
}

fn schema_id(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[1..5].try_into().expect("4-byte schema id"))
}

#[tokio::test]
async fn avro_round_trip_in_confluent_wire_format() {
    let topic = support::random_name("stock-moves");
    let encoder = AvroEncoder::new(settings());
    let bytes = encoder
        .encode(
            vec![
                ("move_id", Value::String("WH/OUT/00042".to_owned())),
                ("qty", Value::Long(-7)),
                ("done", Value::Boolean(true)),
                (
                    "note",
                    Value::Union(1, Box::new(Value::String("rush".to_owned()))),
                ),
            ],
            with_schema(&topic),
        )
        .await
        .expect("encode registers the schema and serializes the record");

    // Confluent wire format: magic byte 0, then the big-endian id the registry assigned.
    assert!(bytes.len() > 5, "payload too short: {bytes:?}");
    assert_eq!(bytes[0], 0, "magic byte");
    let id = schema_id(&bytes);
    let subject = format!("{topic}-value");
    let latest = get_schema_by_subject(
        &settings(),
        &SubjectNameStrategy::TopicNameStrategy(topic.clone(), false),
    )
    .await
    .expect("latest version of the new subject");
    assert_eq!(
        latest.id, id,
        "header id is the id registered under {subject}"
    );
    let subjects = get_all_subjects(&settings()).await.expect("list subjects");
    assert!(subjects.contains(&subject), "{subject} not in {subjects:?}");

    // The body after the header is plain Avro binary for the registered schema.
    let schema = Schema::parse_str(STOCK_MOVE).expect("test schema parses");
    let mut body = &bytes[5..];
    let raw = GenericDatumReader::builder(&schema)
        .build()
        .expect("datum reader for the test schema")
        .read_value(&mut body)
        .expect("body is an Avro datum");
    assert!(body.is_empty(), "trailing bytes after the datum");
    let expected = Value::Record(vec![
        (
            "move_id".to_owned(),
            Value::String("WH/OUT/00042".to_owned()),
        ),
        ("qty".to_owned(), Value::Long(-7)),
        ("done".to_owned(), Value::Boolean(true)),
        (
            "note".to_owned(),
            Value::Union(1, Box::new(Value::String("rush".to_owned()))),
        ),
    ]);
    assert_eq!(raw, expected);

    // The converter's decoder resolves the id through the registry and gets the same record.
    let decoded = AvroDecoder::new(settings())
        .decode(Some(&bytes))
        .await
        .expect("decode through the registry");
    assert_eq!(decoded.value, expected);
    let name = decoded.name.expect("record name");
    assert_eq!(name.fullname(None), "synclag.test.StockMove");

    // Registering the identical schema under another subject reuses the id.
    let other_topic = support::random_name("stock-moves-copy");
    let again = encoder
        .encode(
            vec![
                ("move_id", Value::String("WH/IN/00001".to_owned())),
                ("qty", Value::Long(1)),
                ("done", Value::Boolean(false)),
                ("note", Value::Union(0, Box::new(Value::Null))),
            ],
            with_schema(&other_topic),
        )
        .await
        .expect("encode under a second subject");
    assert_eq!(schema_id(&again), id, "identical schemas share one id");
    let by_id = get_schema_by_id(id, &settings())
        .await
        .expect("fetch schema by id");
    assert_eq!(
        Schema::parse_str(&by_id.schema).expect("registry returns a valid schema"),
        schema
    );
}

#[tokio::test]
async fn unknown_schema_id_is_reported_as_not_found() {
    // A syntactically valid Confluent payload whose schema id was never issued.
    let unknown_id: u32 = 0x7fff_fff0;
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&unknown_id.to_be_bytes());
    bytes.push(2);

    let err = AvroDecoder::new(settings())
        .decode(Some(&bytes))
        .await
        .expect_err("decoding with an unknown schema id must fail");
    let text = err.to_string();
    assert!(
        text.contains("404"),
        "error should carry the registry's 404: {text}"
    );
    assert!(!err.retriable, "a missing schema is not retriable: {text}");

    let err = get_schema_by_id(unknown_id, &settings())
        .await
        .expect_err("fetching an unknown id must fail");
    let cause = err.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("4040"),
        "expected a Confluent 4040x error code in the cause, got {err}"
    );
}

#[tokio::test]
async fn invalid_schema_is_rejected() {
    let topic = support::random_name("broken");
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic,
        false,
        SuppliedSchema::new(
            None,
            SchemaType::Avro,
            "{\"type\": \"record\", \"name\":".to_owned(),
        ),
    );
    let err = get_schema_by_subject(&settings(), &strategy)
        .await
        .expect_err("an unparsable schema must not be registered");
    assert!(
        err.to_string().contains("422"),
        "expected HTTP 422 for an invalid schema, got {err}"
    );
}
