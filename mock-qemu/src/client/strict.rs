//! Strict mode: deviations from the specification, reported as [`Finding`]s.
//!
//! The reference server (libvfio-user) deviates from the specification in a few known ways
//! (listed at the end of the project's `vfio-user.md`). By default the client tolerates each of
//! them silently (a `debug` log line): a client in QEMU's role must work with that server. With
//! [`ClientOptions::strict`](super::ClientOptions::strict) (or
//! [`Client::set_strict`](super::Client::set_strict)) each deviation it sees becomes a
//! [`Finding`] collected on the client ([`Client::findings`](super::Client::findings),
//! [`Client::take_findings`](super::Client::take_findings)), so `mock-qemu` can audit a foreign
//! server. A finding never changes what the call returns: the client carries on exactly as in
//! tolerant mode, so one run lists every deviation. Only a deviation that leaves the reply
//! unusable also fails the call (with [`ClientError::BadReply`](super::ClientError::BadReply),
//! in both modes).
//!
//! | rule id | command | what the server did | the specification says | tolerant handling |
//! |---|---|---|---|---|
//! | `error-reply-has-payload` | any | an error reply (flag 0x20) carries bytes after the header | an error reply is the 16-byte header | the payload is ignored; the call fails with the errno |
//! | `version-caps-wrong-type` | VERSION | a known capability key has a value of the wrong type | a known key of the wrong type is EINVAL | the key is ignored (as if absent) |
//! | `version-minor-too-high` | VERSION | the reply's minor version is above the one requested | minor = min(client's, server's) | accepted |
//! | `dma-remap-accepted` | DMA_MAP | an identical re-map of a mapped range succeeded (only seen by [`Client::audit_remap`](super::Client::audit_remap)) | EEXIST | reported by the return value |
//! | `region-info-argsz-too-small` | DEVICE_GET_REGION_INFO | reply `argsz` below the 32-byte fixed part | `argsz` is the full size needed | accepted |
//! | `region-info-reply-length` | DEVICE_GET_REGION_INFO | the reply is not min(request `argsz`, reply `argsz`) bytes long | trimmed to the request's `argsz` | accepted if the fixed part is there |
//! | `region-info-caps-flag-without-caps` | DEVICE_GET_REGION_INFO | CAPS flag set, but `cap_offset` 0 in a reply with room for the capabilities | CAPS means a capability chain follows | no capabilities |
//! | `region-info-caps-without-flag` | DEVICE_GET_REGION_INFO | `cap_offset` set without the CAPS flag | capabilities only with CAPS | the chain is read anyway |
//! | `region-info-cap-offset-out-of-bounds` | DEVICE_GET_REGION_INFO | a `cap_offset` / `next` points inside the fixed part or past the reply | the chain lies inside the reply | unusable: the call fails |
//! | `region-read-count-mismatch` | REGION_READ | the reply's head is not the request's, or its data is not `count` bytes | the 16 bytes echoed, then `count` bytes | accepted if exactly `count` data bytes came, else the call fails |
//! | `feature-argsz-mismatch` | DEVICE_FEATURE | reply `argsz` differs from the reply's length | `argsz` is the size of head plus data | accepted |
//! | `mig-state-set-reply-mismatch` | DEVICE_FEATURE (SET MIG_DEVICE_STATE) | the reply differs from the request | the SET reply echoes the request | accepted (the state is set: the reply is not an error) |
//! | `report-bits-past-length` | DEVICE_FEATURE (GET DMA_LOGGING_REPORT) | bits past the range's last page are set in the last word | bits beyond the range must be zero | the bits are cleared before the bitmap is returned |
//! | `mig-data-read-padded` | MIG_DATA_READ | the reply carries more than `8 + size` bytes | the reply is `8 + size` bytes | only `size` bytes are used |
//!
//! Not detected: DMA_LOGGING_START ignoring its ranges (only visible as dirty bits outside the
//! ranges, which the client cannot tell from legitimate ones), the 8-bit counter of the page
//! size conversion (wrong bits, not a wrong shape), and the commands refused in STOP (an error
//! reply is a legitimate answer).

use std::fmt;

use serde::de::DeserializeOwned;
use vfu_server::wire::{Capabilities, Command};

/// An error reply carries a payload.
pub const ERROR_REPLY_HAS_PAYLOAD: &str = "error-reply-has-payload";
/// A known VERSION capability key has a value of the wrong type.
pub const VERSION_CAPS_WRONG_TYPE: &str = "version-caps-wrong-type";
/// The VERSION reply's minor is above the requested one.
pub const VERSION_MINOR_TOO_HIGH: &str = "version-minor-too-high";
/// An identical DMA_MAP re-map succeeded.
pub const DMA_REMAP_ACCEPTED: &str = "dma-remap-accepted";
/// A region info reply's argsz is below the fixed part.
pub const REGION_INFO_ARGSZ_TOO_SMALL: &str = "region-info-argsz-too-small";
/// A region info reply has the wrong length.
pub const REGION_INFO_REPLY_LENGTH: &str = "region-info-reply-length";
/// CAPS flag without a capability chain.
pub const REGION_INFO_CAPS_FLAG_WITHOUT_CAPS: &str = "region-info-caps-flag-without-caps";
/// A capability chain without the CAPS flag.
pub const REGION_INFO_CAPS_WITHOUT_FLAG: &str = "region-info-caps-without-flag";
/// A capability offset outside the reply.
pub const REGION_INFO_CAP_OFFSET_OUT_OF_BOUNDS: &str = "region-info-cap-offset-out-of-bounds";
/// A REGION_READ reply that does not match its request.
pub const REGION_READ_COUNT_MISMATCH: &str = "region-read-count-mismatch";
/// A DEVICE_FEATURE reply whose argsz is not its length.
pub const FEATURE_ARGSZ_MISMATCH: &str = "feature-argsz-mismatch";
/// A SET MIG_DEVICE_STATE reply that does not echo the request.
pub const MIG_STATE_SET_REPLY_MISMATCH: &str = "mig-state-set-reply-mismatch";
/// A dirty report with bits set past its range.
pub const REPORT_BITS_PAST_LENGTH: &str = "report-bits-past-length";
/// A MIG_DATA_READ reply longer than `8 + size`.
pub const MIG_DATA_READ_PADDED: &str = "mig-data-read-padded";

/// Every rule id, in the order of the table above.
pub const RULES: [&str; 14] = [
    ERROR_REPLY_HAS_PAYLOAD,
    VERSION_CAPS_WRONG_TYPE,
    VERSION_MINOR_TOO_HIGH,
    DMA_REMAP_ACCEPTED,
    REGION_INFO_ARGSZ_TOO_SMALL,
    REGION_INFO_REPLY_LENGTH,
    REGION_INFO_CAPS_FLAG_WITHOUT_CAPS,
    REGION_INFO_CAPS_WITHOUT_FLAG,
    REGION_INFO_CAP_OFFSET_OUT_OF_BOUNDS,
    REGION_READ_COUNT_MISMATCH,
    FEATURE_ARGSZ_MISMATCH,
    MIG_STATE_SET_REPLY_MISMATCH,
    REPORT_BITS_PAST_LENGTH,
    MIG_DATA_READ_PADDED,
];

/// One deviation from the specification seen in strict mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The command whose reply deviated.
    pub cmd: Command,
    /// The msg_id of the request (and its reply).
    pub msg_id: u16,
    /// The rule's short id (one of [`RULES`]).
    pub rule: &'static str,
    /// What exactly was seen.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} msg_id {}: {}", self.rule, self.cmd, self.msg_id, self.detail)
    }
}

/// Parses the NUL-terminated JSON of a VERSION reply leniently: a known key of the wrong type
/// is left out (and named in the returned list) instead of failing the whole object. Fails
/// only when the text is not a NUL-terminated JSON object at all.
pub(crate) fn parse_caps_lenient(tail: &[u8]) -> Result<(Capabilities, Vec<String>), String> {
    if let Ok(c) = Capabilities::parse(tail) {
        return Ok((c, Vec::new()));
    }
    let text = match tail.iter().position(|b| *b == 0) {
        Some(nul) => tail.get(..nul).unwrap_or_default(),
        None => tail,
    };
    let text = std::str::from_utf8(text).map_err(|e| format!("capabilities are not UTF-8: {e}"))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("capabilities JSON: {e}"))?;
    let empty = serde_json::Map::new();
    let caps = match value.get("capabilities") {
        None => &empty,
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => return Ok((Capabilities::default(), vec![format!("capabilities is {other}, not an object")])),
    };
    let mut wrong = Vec::new();
    let mut out = Capabilities::default();
    fn take<T: DeserializeOwned>(
        m: &serde_json::Map<String, serde_json::Value>,
        key: &str,
        wrong: &mut Vec<String>,
    ) -> Option<T> {
        let v = m.get(key)?;
        match serde_json::from_value(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                wrong.push(format!("{key}: {v} ({e})"));
                None
            }
        }
    }
    out.max_msg_fds = take(caps, "max_msg_fds", &mut wrong);
    out.max_data_xfer_size = take(caps, "max_data_xfer_size", &mut wrong);
    out.max_dma_maps = take(caps, "max_dma_maps", &mut wrong);
    out.pgsizes = take(caps, "pgsizes", &mut wrong);
    out.write_multiple = take(caps, "write_multiple", &mut wrong);
    out.migration = take(caps, "migration", &mut wrong);
    out.twin_socket = take(caps, "twin_socket", &mut wrong);
    Ok((out, wrong))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_in_the_table() {
        let doc = include_str!("strict.rs");
        for (i, r) in RULES.iter().enumerate() {
            assert!(!RULES[..i].contains(r), "{r} twice");
            assert!(doc.contains(&format!("| `{r}` |")), "{r} is not in the table");
        }
    }

    #[test]
    fn lenient_caps_drop_only_the_wrong_keys() {
        let (c, wrong) =
            parse_caps_lenient(b"{\"capabilities\":{\"max_msg_fds\":\"8\",\"pgsizes\":4096,\"x\":1}}\0").unwrap();
        assert_eq!((c.max_msg_fds, c.pgsizes), (None, Some(4096)));
        assert_eq!(wrong.len(), 1);
        assert!(wrong[0].starts_with("max_msg_fds"));
        assert!(parse_caps_lenient(b"{not json\0").is_err());
    }
}
