//! The JSON capabilities object carried by VERSION requests and replies.
//!
//! Every key is optional and unknown keys are ignored, but a known key of the wrong type
//! makes the whole negotiation fail with EINVAL, as the specification asks.

use serde::{Deserialize, Serialize};

/// Default for `max_msg_fds` when a peer does not state it.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default for `max_data_xfer_size` when a peer does not state it (1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Default for `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default for `pgsizes`: 4 KiB pages only.
pub const DEFAULT_PGSIZES: u64 = 4096;

/// `capabilities` object of a VERSION message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Fds the sender can receive in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_fds: Option<u32>,
    /// Largest data transfer the sender accepts in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_xfer_size: Option<u32>,
    /// Most DMA regions the sender supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dma_maps: Option<u32>,
    /// DMA page sizes supported, OR'ed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgsizes: Option<u64>,
    /// Whether REGION_WRITE_MULTI is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_multiple: Option<bool>,
    /// Migration support, as the reference server advertises it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationCap>,
    /// Twin-socket mode for server-to-client messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_socket: Option<TwinSocket>,
}

/// `migration` capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCap {
    /// Page size of migration dirty tracking.
    pub pgsize: u64,
}

/// `twin_socket` capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinSocket {
    /// Whether the sender supports twin-socket mode.
    #[serde(default)]
    pub supported: bool,
    /// In a server's reply: index of the client's socket end among the reply's fds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_index: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Envelope {
    #[serde(default)]
    capabilities: Capabilities,
}

/// Why the JSON of a VERSION message was refused.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The JSON has a NUL byte before its end, or is not UTF-8.
    #[error("capabilities are not a NUL-terminated UTF-8 string")]
    NotAString,
    /// The JSON does not parse, or a known key has the wrong type.
    #[error("capabilities JSON is invalid")]
    Json(#[from] serde_json::Error),
}

impl Capabilities {
    /// Parses the NUL-terminated JSON tail of a VERSION message; an empty tail means defaults.
    pub fn parse(tail: &[u8]) -> Result<Self, VersionError> {
        let text = match tail.iter().position(|b| *b == 0) {
            Some(nul) if tail.get(nul..).is_some_and(|rest| rest.iter().all(|b| *b == 0)) => {
                tail.get(..nul).unwrap_or_default()
            }
            Some(_) => return Err(VersionError::NotAString),
            None => tail,
        };
        let text = std::str::from_utf8(text).map_err(|_| VersionError::NotAString)?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let env: Envelope = serde_json::from_str(text)?;
        Ok(env.capabilities)
    }

    /// The NUL-terminated JSON form sent on the wire.
    pub fn to_wire(&self) -> Vec<u8> {
        let env = Envelope { capabilities: self.clone() };
        let mut out = serde_json::to_vec(&env).unwrap_or_else(|_| b"{}".to_vec());
        out.push(0);
        out
    }

    /// `max_msg_fds`, or its default.
    pub fn max_msg_fds_or_default(&self) -> u32 {
        self.max_msg_fds.unwrap_or(DEFAULT_MAX_MSG_FDS)
    }

    /// `max_data_xfer_size`, or its default.
    pub fn max_data_xfer_size_or_default(&self) -> u32 {
        self.max_data_xfer_size.unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tail_means_defaults() {
        assert_eq!(Capabilities::parse(b"").unwrap(), Capabilities::default());
        assert_eq!(Capabilities::parse(b"\0").unwrap(), Capabilities::default());
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let caps = Capabilities::parse(b"{\"capabilities\":{\"max_msg_fds\":4,\"frobnicate\":[1]}}\0").unwrap();
        assert_eq!(caps.max_msg_fds, Some(4));
    }

    #[test]
    fn known_key_of_wrong_type_is_refused() {
        assert!(Capabilities::parse(b"{\"capabilities\":{\"max_msg_fds\":\"4\"}}\0").is_err());
        assert!(Capabilities::parse(b"{\"capabilities\":{\"twin_socket\":{\"supported\":1}}}\0").is_err());
    }

    #[test]
    fn nul_inside_the_string_is_refused() {
        assert!(matches!(Capabilities::parse(b"{}\0{}\0"), Err(VersionError::NotAString)));
    }

    #[test]
    fn reference_client_capabilities_parse() {
        let caps =
            Capabilities::parse(b"{\"capabilities\":{\"max_msg_fds\":32,\"max_data_xfer_size\":1024}}\0").unwrap();
        assert_eq!((caps.max_msg_fds, caps.max_data_xfer_size), (Some(32), Some(1024)));
    }
}
