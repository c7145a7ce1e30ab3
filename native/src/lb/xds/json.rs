//! The proto3 JSON reading toolkit of the xDS parsers: a message as a JSON
//! object read field by field (snake_case or lowerCamelCase names, as the
//! proto3 JSON mapping allows, <https://protobuf.dev/programming-guides/json/>),
//! unknown and unsupported fields refused with the field's path, and the
//! well-known types the parsers meet (Duration, wrappers, Percent, enums by
//! name or number). Errors name the cluster and the field.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where we are: the cluster's label and a field path.
pub(super) struct Ctx<'a> {
    pub(super) cluster: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Error {
        Error::cluster(self.cluster, field, reason)
    }
}

pub(super) fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `key` is the lowerCamelCase form of the snake_case `field`,
/// without allocating (this runs for every key of every parsed object).
fn camel_eq(field: &str, key: &str) -> bool {
    let mut k = key.chars();
    let mut up = false;
    for c in field.chars() {
        if c == '_' {
            up = true;
            continue;
        }
        let want = if up { c.to_ascii_uppercase() } else { c };
        up = false;
        if k.next() != Some(want) {
            return false;
        }
    }
    k.next().is_none()
}

/// A proto message as a JSON object, read field by field.
pub(super) struct Msg<'a> {
    obj: &'a Map<String, Value>,
    path: String,
}

impl<'a> Msg<'a> {
    pub(super) fn new(ctx: &Ctx<'_>, v: &'a Value, path: &str) -> Result<Msg<'a>> {
        match v {
            Value::Object(obj) => Ok(Msg { obj, path: path.to_owned() }),
            other => Err(ctx.err(path_or(path), format!("expected an object, got {}", kind(other)))),
        }
    }

    pub(super) fn field_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of field `name` (snake_case, or its camelCase form); null counts as absent.
    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        // The camelCase form is only built when the snake_case one is absent
        // and could differ (parsing 50k endpoints must not allocate per field).
        match self.obj.get(name) {
            Some(v) => Some(v),
            None if name.contains('_') => self.obj.get(&camel(name)),
            None => None,
        }
        .filter(|v| !v.is_null())
    }

    /// Rejects fields that are neither `known` nor `ignored`, and those in
    /// `unsupported` when present (with `why`).
    pub(super) fn check(
        &self,
        ctx: &Ctx<'_>,
        known: &[&str],
        ignored: &[&str],
        unsupported: &[(&str, &str)],
    ) -> Result<()> {
        for (k, v) in self.obj {
            if v.is_null() {
                continue;
            }
            // A camelCase form differs from its field name (`consecutive5xx` for
            // `consecutive_5xx` has no upper-case letter but lost an underscore).
            let camel_key = !k.contains('_');
            let same = |f: &str| f == k || (camel_key && f.contains('_') && camel_eq(f, k));
            let is = |list: &[&str]| list.iter().any(|f| same(f));
            if let Some((f, why)) = unsupported.iter().find(|(f, _)| same(f)) {
                if !is_default(v) {
                    return Err(ctx.err(self.field_path(f), format!("not supported: {why}")));
                }
                continue;
            }
            if !(is(known) || is(ignored)) {
                return Err(ctx.err(self.field_path(k), "unknown field"));
            }
        }
        Ok(())
    }
}

/// proto3 JSON omits defaults; an explicitly given default (false, 0, "",
/// [], {}) means the same and is accepted for unsupported fields.
pub(super) fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

pub(super) fn path_or(p: &str) -> &str {
    if p.is_empty() {
        "(cluster)"
    } else {
        p
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn string<'a>(ctx: &Ctx<'_>, m: &Msg<'a>, name: &str) -> Result<&'a str> {
    match m.get(name) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected a string, got {}", kind(v)))),
    }
}

pub(super) fn boolean(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<bool> {
    match m.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected true or false, got {}", kind(v)))),
    }
}

/// An unsigned integer field (proto3 JSON also allows integers as strings).
/// Accepts a `{"value": n}` wrapper object too.
pub(super) fn uint(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str, max: u64) -> Result<Option<u64>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let v = match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("value") => &o["value"],
        v => v,
    };
    let n = match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= max => Ok(Some(n)),
        Some(n) => Err(ctx.err(path, format!("{n} is out of range (at most {max})"))),
        None => Err(ctx.err(path, format!("expected a non-negative integer, got {v}"))),
    }
}

pub(super) fn number(ctx: &Ctx<'_>, v: &Value, path: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| ctx.err(path, "not a number")),
        Value::String(s) => s.parse::<f64>().map_err(|_| ctx.err(path, format!("expected a number, got {s:?}"))),
        v => Err(ctx.err(path, format!("expected a number, got {}", kind(v)))),
    }
}

/// A `google.protobuf.Duration` in proto3 JSON ("1.5s") as milliseconds.
pub(super) fn duration_ms(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<Option<u64>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let bad = || ctx.err(&path, format!("expected a duration like \"10s\" or \"0.5s\", got {v}"));
    let s = v.as_str().ok_or_else(bad)?;
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut nanos: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    for _ in frac.len()..9 {
        nanos *= 10;
    }
    whole.checked_mul(1000).and_then(|ms| ms.checked_add(nanos.div_ceil(1_000_000))).map(Some).ok_or_else(bad)
}

/// A `type.v3.Percent` (`{"value": 50.0}`) rounded to a whole percent, capped at 100.
pub(super) fn percent(ctx: &Ctx<'_>, m: &Msg<'_>, name: &str) -> Result<Option<u32>> {
    let Some(v) = m.get(name) else { return Ok(None) };
    let path = m.field_path(name);
    let pm = Msg::new(ctx, v, &path)?;
    pm.check(ctx, &["value"], &[], &[])?;
    let x = match pm.get("value") {
        None => 0.0,
        Some(v) => number(ctx, v, &pm.field_path("value"))?,
    };
    if !(0.0..=100.0).contains(&x) {
        return Err(ctx.err(pm.field_path("value"), format!("{x} is not a percentage (0 to 100)")));
    }
    Ok(Some(x.round() as u32))
}

/// An enum given by name or number.
pub(super) fn enum_field<'v>(ctx: &Ctx<'_>, m: &Msg<'v>, name: &str) -> Result<Option<EnumVal<'v>>> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(EnumVal::Name(s))),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(Some(EnumVal::Num(n.as_i64().unwrap_or_default()))),
        Some(v) => Err(ctx.err(m.field_path(name), format!("expected an enum name, got {}", kind(v)))),
    }
}

pub(super) enum EnumVal<'a> {
    Name(&'a str),
    Num(i64),
}
