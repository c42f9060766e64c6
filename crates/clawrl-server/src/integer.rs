//! Integers as JSON may write them: `4` or `4.0`. JSON Schema counts an integral float as an
//! integer, and so do Python clients that compute a count; serde alone refuses it.

use serde::{Deserialize, Deserializer, de::Error};
use serde_json::Number;

/// `#[serde(deserialize_with = "integer::optional")]` for an `Option<T>` integer field: `null`
/// or absent is `None`; a number with no fractional part that fits `T` is `Some`; anything
/// else is an error naming the value.
pub fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let Some(n) = Option::<Number>::deserialize(d)? else {
        return Ok(None);
    };
    let exact = if let Some(u) = n.as_u64() {
        Some(i128::from(u))
    } else if let Some(i) = n.as_i64() {
        Some(i128::from(i))
    } else {
        // Integral floats within ±2^64 (beyond that, nothing we count fits anyway).
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1.8e19)
            .map(|f| f as i128)
    };
    exact
        .and_then(|v| T::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected an integer in range, got {n}")))
}
