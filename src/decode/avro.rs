//! Avro in the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary),
//! schemas fetched from the registry once and cached by schema id.

use super::DecodeError;
use crate::config::Registry;
use apache_avro::types::Value as Avro;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Map, Number, Value};

/// Builds registry client settings from the topology (basic auth password from the environment).
pub fn sr_settings(registry: &Registry) -> SrSettings {
    let mut builder = SrSettings::new_builder(registry.url.clone());
    builder.set_timeout(registry.timeout);
    if let Some(user) = &registry.username {
        let password = registry
            .password_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok());
        builder.set_basic_authorization(user, password.as_deref());
    }
    builder
        .build()
        .unwrap_or_else(|_| SrSettings::new(registry.url.clone()))
}

/// Decodes Confluent-framed Avro into JSON values.
pub struct RegistryDecoder {
    inner: AvroDecoder,
}

impl RegistryDecoder {
    pub fn new(registry: &Registry) -> RegistryDecoder {
        RegistryDecoder {
            inner: AvroDecoder::new(sr_settings(registry)),
        }
    }

    pub async fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(DecodeError::NotAvro(
                "missing magic byte 0 and schema id".into(),
            ));
        }
        match self.inner.decode(Some(bytes)).await {
            Ok(result) => Ok(to_json(result.value)),
            Err(e) if e.retriable => {
                // The client caches failures; a registry outage must not stick.
                self.inner.remove_errors_from_cache();
                Err(DecodeError::RegistryUnavailable(e.to_string()))
            }
            Err(e) => {
                let text = e.to_string();
                // An unreachable registry surfaces as a non-retriable HTTP error in some client
                // versions; treat transport failures as an outage, not as bad data.
                if text.contains("error sending request")
                    || text.contains("connect")
                    || text.contains("timed out")
                {
                    self.inner.remove_errors_from_cache();
                    Err(DecodeError::RegistryUnavailable(text))
                } else {
                    Err(DecodeError::NotAvro(text))
                }
            }
        }
    }
}

/// Converts an Avro value to JSON the way field paths expect: records and maps as
/// objects, unions unwrapped, enums as their symbol, timestamps as epoch numbers.
pub fn to_json(v: Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(i),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampNanos(i) => Value::from(i),
        Avro::Float(f) => Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        Avro::Double(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Uuid(u) => Value::String(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => {
            Value::String(String::from_utf8_lossy(&b).into_owned())
        }
        Avro::Union(_, inner) => to_json(*inner),
        Avro::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Avro::Map(m) => Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Avro::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}
