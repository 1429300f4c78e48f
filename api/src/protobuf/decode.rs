//! The protobuf wire reader and the table-driven message → JSON conversion.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::ProtobufError;
use super::descriptors::MESSAGES;

/// One message of the table.
pub(super) struct Msg {
    /// Package-qualified name (`api.core.v1.PodSpec`), for error messages.
    pub name: &'static str,
    /// Members, sorted by number.
    pub fields: &'static [Field],
}

/// One member of a message.
pub(super) struct Field {
    pub num: u32,
    pub json: &'static str,
    pub kind: Kind,
    pub repeated: bool,
    /// Go's member has no `omitempty` (k8s-openapi makes it non-optional): keep zero values.
    pub required: bool,
}

/// Scalar wire types.
#[derive(Clone, Copy)]
#[allow(dead_code)] // the generated table uses a subset
pub(super) enum Scalar {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
}

/// Messages with their own JSON form.
#[derive(Clone, Copy)]
#[allow(dead_code)] // the generated table uses a subset
pub(super) enum Special {
    /// `meta.v1.Time{seconds, nanos}` → RFC 3339 with seconds.
    Time,
    /// `meta.v1.MicroTime` → RFC 3339 with microseconds.
    MicroTime,
    /// `meta.v1.Duration{duration ns}` → Go duration string.
    Duration,
    /// `resource.Quantity{string}` → the string.
    Quantity,
    /// `intstr.IntOrString{type, intVal, strVal}` → number or string.
    IntOrString,
    /// `runtime.RawExtension{raw}` / `FieldsV1{Raw}` → the embedded JSON.
    RawJson,
    /// `ExtraValue{items}` → array of strings.
    StringList,
}

/// The kind of a member.
#[derive(Clone, Copy)]
#[allow(dead_code)] // the generated table uses a subset
pub(super) enum Kind {
    Scalar(Scalar),
    Msg(usize),
    /// A Go-embedded struct: its members appear in the parent's JSON object.
    Inline(usize),
    Special(Special),
    MapStr,
    MapBytes,
    MapMsg(usize),
    MapSpecial(Special),
}

/// Pointer members whose zero value means something (`replicas: 0`, `runAsUser: 0`, ...).
/// gogo-protobuf writes non-pointer members even when zero, so zeros are dropped unless the
/// member is required or listed here; pointer members are only written when set.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "terminationGracePeriodSeconds",
    "gracePeriodSeconds",
    "deletionGracePeriodSeconds",
    "automountServiceAccountToken",
    "expirationSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "parallelism",
    "completions",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "suspend",
    "enableServiceLinks",
    "shareProcessNamespace",
    "hostUsers",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "allowPrivilegeEscalation",
    "optional",
    "defaultMode",
    "mode",
    "orphanDependents",
    "blockOwnerDeletion",
    "controller",
    "immutable",
    "allocateLoadBalancerNodePorts",
    "priority",
    "leaseDurationSeconds",
    "leaseTransitions",
    "ready",
    "serving",
    "terminating",
    "minAvailable",
    "maxUnavailable",
    // PriorityClass.value has no omitempty.
    "value",
];

/// Nesting bound for messages.
const MAX_DEPTH: usize = 64;

/// A protobuf wire-format cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn malformed(what: &str) -> ProtobufError {
    ProtobufError::Malformed(what.to_string())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("length runs past the end of the message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtobufError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3).map_err(|_| malformed("field number too large"))?;
        if num == 0 {
            return Err(malformed("field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| malformed("fixed64"))?,
                ))
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| malformed("length too large"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes(
                    b.try_into().map_err(|_| malformed("fixed32"))?,
                ))
            }
            t => {
                return Err(ProtobufError::Malformed(format!(
                    "unsupported wire type {t}"
                )));
            }
        };
        Ok(Some((num, wire)))
    }
}

/// The parts of a `runtime.Unknown` envelope.
pub(super) struct Unknown<'a> {
    pub api_version: String,
    pub kind: String,
    pub raw: &'a [u8],
    pub content_encoding: String,
    pub content_type: String,
}

/// Decodes `runtime.Unknown{1: typeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
/// 4: contentType}`.
pub(super) fn decode_unknown(buf: &[u8]) -> Result<Unknown<'_>, ProtobufError> {
    let ctx = || "runtime.Unknown".to_string();
    let mut u = Unknown {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
        content_type: String::new(),
    };
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.next()? {
        match num {
            1 => {
                let mut tm = Reader::new(bytes(wire, &ctx)?);
                while let Some((n, w)) = tm.next()? {
                    match n {
                        1 => u.api_version = utf8(bytes(w, &ctx)?, &ctx)?,
                        2 => u.kind = utf8(bytes(w, &ctx)?, &ctx)?,
                        _ => {}
                    }
                }
            }
            2 => u.raw = bytes(wire, &ctx)?,
            3 => u.content_encoding = utf8(bytes(wire, &ctx)?, &ctx)?,
            4 => u.content_type = utf8(bytes(wire, &ctx)?, &ctx)?,
            _ => {}
        }
    }
    Ok(u)
}

/// Decodes message `index` of the table from `buf` into a JSON object.
pub(super) fn decode_message(
    index: usize,
    buf: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deeply"));
    }
    let msg = MESSAGES
        .get(index)
        .ok_or_else(|| malformed("descriptor table index out of range"))?;
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.next()? {
        // Unknown members are skipped, as gogo-protobuf's generated Unmarshal does.
        let Ok(at) = msg.fields.binary_search_by_key(&num, |f| f.num) else {
            continue;
        };
        let f = &msg.fields[at];
        let ctx = || format!("{}.{}", msg.name, f.json);
        match f.kind {
            Kind::Scalar(s) => {
                if f.repeated {
                    let list = array_entry(&mut out, f.json);
                    match (s, wire) {
                        // Packed numeric lists (proto3 style); gogo's proto2 does not pack.
                        (Scalar::Bool | Scalar::I32 | Scalar::I64, Wire::Bytes(b)) => {
                            let mut pr = Reader::new(b);
                            while pr.pos < b.len() {
                                let v = pr.varint()?;
                                list.push(scalar(s, Wire::Varint(v), &ctx)?);
                            }
                        }
                        (s, w) => list.push(scalar(s, w, &ctx)?),
                    }
                } else {
                    out.insert(f.json.to_string(), scalar(s, wire, &ctx)?);
                }
            }
            Kind::Msg(i) => {
                let v = Value::Object(decode_message(i, bytes(wire, &ctx)?, depth + 1)?);
                if f.repeated {
                    array_entry(&mut out, f.json).push(v);
                } else {
                    out.insert(f.json.to_string(), v);
                }
            }
            Kind::Inline(i) => {
                for (k, v) in decode_message(i, bytes(wire, &ctx)?, depth + 1)? {
                    out.insert(k, v);
                }
            }
            Kind::Special(s) => {
                let v = special(s, bytes(wire, &ctx)?, &ctx)?;
                if f.repeated {
                    array_entry(&mut out, f.json).push(v.unwrap_or(Value::Null));
                } else if let Some(v) = v {
                    out.insert(f.json.to_string(), v);
                }
            }
            Kind::MapStr | Kind::MapBytes | Kind::MapMsg(_) | Kind::MapSpecial(_) => {
                let (k, v) = map_entry(f.kind, bytes(wire, &ctx)?, depth, &ctx)?;
                let entry = out
                    .entry(f.json.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(k, v);
                }
            }
        }
    }
    // gogo writes every non-pointer member, zero or not: drop the zeros Go's JSON would omit.
    // Status members are never pointers in the kinds listed; keep the list for spec members.
    let keep_listed = !msg.name.ends_with("Status");
    for f in msg.fields {
        if f.required || f.repeated || (keep_listed && KEEP_ZERO.contains(&f.json)) {
            continue;
        }
        if out.get(f.json).is_some_and(is_zero) {
            out.remove(f.json);
        }
    }
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Object(m) => m.is_empty(),
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
    }
}

fn array_entry<'m>(out: &'m mut Map<String, Value>, key: &str) -> &'m mut Vec<Value> {
    let e = out
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !e.is_array() {
        *e = Value::Array(Vec::new());
    }
    match e {
        Value::Array(a) => a,
        // Unreachable: replaced by an array just above.
        _ => unreachable!("entry is an array"),
    }
}

fn bytes<'a>(wire: Wire<'a>, ctx: &dyn Fn() -> String) -> Result<&'a [u8], ProtobufError> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        _ => Err(ProtobufError::Malformed(format!(
            "{}: expected a length-delimited value",
            ctx()
        ))),
    }
}

fn utf8(b: &[u8], ctx: &dyn Fn() -> String) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ProtobufError::Malformed(format!("{}: string is not UTF-8", ctx())))
}

fn scalar(s: Scalar, wire: Wire<'_>, ctx: &dyn Fn() -> String) -> Result<Value, ProtobufError> {
    let bad = || ProtobufError::Malformed(format!("{}: wrong wire type", ctx()));
    Ok(match (s, wire) {
        (Scalar::Str, Wire::Bytes(b)) => Value::String(utf8(b, ctx)?),
        (Scalar::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // int32 is sign-extended to 64 bits on the wire; truncation is the protobuf rule.
        (Scalar::I32, Wire::Varint(v)) => Value::from(v as i64 as i32),
        (Scalar::I64, Wire::Varint(v)) => Value::from(v as i64),
        (Scalar::F64, Wire::Fixed64(v)) => Value::from(f64::from_bits(v)),
        (Scalar::F64, Wire::Fixed32(v)) => Value::from(f64::from(f32::from_bits(v))),
        _ => return Err(bad()),
    })
}

fn map_entry(
    kind: Kind,
    buf: &[u8],
    depth: usize,
    ctx: &dyn Fn() -> String,
) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut value: Option<Value> = None;
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.next()? {
        match num {
            1 => key = utf8(bytes(wire, ctx)?, ctx)?,
            2 => {
                value = match kind {
                    Kind::MapStr => Some(scalar(Scalar::Str, wire, ctx)?),
                    Kind::MapBytes => Some(scalar(Scalar::Bytes, wire, ctx)?),
                    Kind::MapMsg(i) => Some(Value::Object(decode_message(
                        i,
                        bytes(wire, ctx)?,
                        depth + 1,
                    )?)),
                    Kind::MapSpecial(s) => special(s, bytes(wire, ctx)?, ctx)?,
                    _ => return Err(malformed("map entry of a non-map member")),
                }
            }
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| match kind {
        Kind::MapStr | Kind::MapBytes => Value::String(String::new()),
        Kind::MapMsg(_) => Value::Object(Map::new()),
        _ => Value::Null,
    });
    Ok((key, value))
}

/// Decodes a message with its own JSON form; `None` for the zero value Go's JSON omits.
fn special(
    s: Special,
    buf: &[u8],
    ctx: &dyn Fn() -> String,
) -> Result<Option<Value>, ProtobufError> {
    let mut r = Reader::new(buf);
    let mut ints = [0i64; 4];
    let mut text: Option<String> = None;
    let mut raw: Option<&[u8]> = None;
    let mut list = Vec::new();
    while let Some((num, wire)) = r.next()? {
        match (s, num, wire) {
            (Special::Quantity, 1, Wire::Bytes(b)) => text = Some(utf8(b, ctx)?),
            (Special::IntOrString, 3, Wire::Bytes(b)) => text = Some(utf8(b, ctx)?),
            (Special::RawJson, 1, Wire::Bytes(b)) => raw = Some(b),
            (Special::StringList, 1, Wire::Bytes(b)) => list.push(Value::String(utf8(b, ctx)?)),
            (_, n @ 1..=3, Wire::Varint(v)) => ints[n as usize] = v as i64,
            _ => {}
        }
    }
    Ok(match s {
        Special::Time | Special::MicroTime => {
            let (secs, nanos) = (ints[1], ints[2]);
            if secs == 0 && nanos == 0 {
                None
            } else {
                Some(Value::String(rfc3339(
                    secs,
                    matches!(s, Special::MicroTime).then_some(nanos / 1000),
                )))
            }
        }
        Special::Duration => Some(Value::String(go_duration(ints[1]))),
        Special::Quantity => text.map(Value::String),
        Special::IntOrString => {
            if ints[1] == 1 {
                Some(Value::String(text.unwrap_or_default()))
            } else {
                Some(Value::from(ints[2] as i32))
            }
        }
        Special::RawJson => match raw {
            None | Some([]) => None,
            Some(b) => Some(serde_json::from_slice(b).map_err(|e| {
                ProtobufError::Malformed(format!("{}: embedded object is not JSON: {e}", ctx()))
            })?),
        },
        Special::StringList => Some(Value::Array(list)),
    })
}

/// `seconds` since the Unix epoch as RFC 3339 UTC (`2006-01-02T15:04:05Z`), with
/// microseconds when given.
pub(super) fn rfc3339(seconds: i64, micros: Option<i64>) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    match micros {
        Some(us) => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}Z"),
        None => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

/// Nanoseconds as Go's `time.Duration.String()` for whole seconds (`1h2m3s`, `0s`).
fn go_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let total = nanos.unsigned_abs();
    let secs = total / 1_000_000_000;
    let frac = total % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h{m}m"));
    } else if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, None), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400, Some(5)), "2000-02-29T00:00:00.000005Z");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(0), "0s");
    }
}
