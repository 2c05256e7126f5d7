//! Where servers are known to differ from the specification in ways clients tolerate: the
//! reference library's documented deviations. The model still finds them, as
//! [`Severity::Deviation`](crate::report::Severity::Deviation) rather than as violations, and
//! so does the client's strict mode (`mock_qemu::client::strict`), whose rule ids these share.

use mock_qemu::client::strict;

/// A known, tolerated deviation from the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deviation {
    /// A MIG_DATA_READ reply padded to 8 + the requested size, the real length in `size`.
    MigDataReadPadded,
    /// Report bits past the range's last page, inside its last u64, set.
    ReportBitsPastLength,
    /// An identical DMA_MAP of a mapped range accepted.
    DmaRemapAccepted,
    /// An error reply that carries a payload.
    ErrorReplyHasPayload,
    /// A SET MIG_DEVICE_STATE reply that echoes more than the state (its data_fd).
    MigStateSetReplyMismatch,
    /// A request the specification refuses, refused with another errno.
    OtherErrno,
    /// A request that takes no fds served with fds, which were ignored.
    UnexpectedFdsAccepted,
    /// A DEVICE_SET_IRQS served with a flag the specification does not define (ignored),
    /// masking an index whose IRQ_INFO does not say MASKABLE, or a MASK/UNMASK with eventfds
    /// (ignored).
    SetIrqsLenient,
}

impl Deviation {
    /// Every known deviation.
    pub const ALL: [Deviation; 8] = [
        Deviation::MigDataReadPadded,
        Deviation::ReportBitsPastLength,
        Deviation::DmaRemapAccepted,
        Deviation::ErrorReplyHasPayload,
        Deviation::MigStateSetReplyMismatch,
        Deviation::OtherErrno,
        Deviation::UnexpectedFdsAccepted,
        Deviation::SetIrqsLenient,
    ];

    /// Its kind in reports: the client's strict-mode rule id where it has one.
    pub fn kind(self) -> &'static str {
        match self {
            Deviation::MigDataReadPadded => strict::MIG_DATA_READ_PADDED,
            Deviation::ReportBitsPastLength => strict::REPORT_BITS_PAST_LENGTH,
            Deviation::DmaRemapAccepted => strict::DMA_REMAP_ACCEPTED,
            Deviation::ErrorReplyHasPayload => strict::ERROR_REPLY_HAS_PAYLOAD,
            Deviation::MigStateSetReplyMismatch => strict::MIG_STATE_SET_REPLY_MISMATCH,
            Deviation::OtherErrno => "other-errno",
            Deviation::UnexpectedFdsAccepted => "unexpected-fds-accepted",
            Deviation::SetIrqsLenient => "set-irqs-lenient",
        }
    }

    /// The deviation a strict-mode rule id names, if it is a known one.
    pub fn from_rule(rule: &str) -> Option<Deviation> {
        Self::ALL.into_iter().find(|d| d.kind() == rule)
    }

    /// Whether the protocol model finds it itself (the client's finding of it would repeat it).
    pub fn judged_by_model(self) -> bool {
        matches!(
            self,
            Deviation::MigDataReadPadded
                | Deviation::ReportBitsPastLength
                | Deviation::DmaRemapAccepted
                | Deviation::OtherErrno
                | Deviation::UnexpectedFdsAccepted
                | Deviation::SetIrqsLenient
        )
    }

    /// The specification's words it breaks.
    pub fn specification(self) -> &'static str {
        match self {
            Deviation::MigDataReadPadded => {
                "MIG_DATA_READ: the reply's data is `size` bytes; a `size` below the requested size is the short read"
            }
            Deviation::ReportBitsPastLength => {
                "DMA_LOGGING_REPORT: the bitmap has one bit per page of the range; bits past it are zero"
            }
            Deviation::DmaRemapAccepted => "DMA_MAP: a range that overlaps a mapped one is refused with EEXIST",
            Deviation::ErrorReplyHasPayload => "an error reply is the header alone, its errno in the header",
            Deviation::MigStateSetReplyMismatch => {
                "DEVICE_FEATURE SET MIG_DEVICE_STATE: the reply carries the new device state"
            }
            Deviation::OtherErrno => {
                "the errno the specification (or its model's documented choice) names for this refusal"
            }
            Deviation::UnexpectedFdsAccepted => {
                "fds travel with DMA_MAP (0 or 1) and DEVICE_SET_IRQS (eventfds) only; a request with others is refused (the project's documented choice)"
            }
            Deviation::SetIrqsLenient => {
                "DEVICE_SET_IRQS: flags outside DATA_NONE/BOOL/EVENTFD and TRIGGER/MASK/UNMASK, MASK/UNMASK of an index that is not MASKABLE, and MASK/UNMASK with eventfds are refused with EINVAL (as VFIO refuses the first two; the kernel's INTx unmask eventfd is not offered over vfio-user)"
            }
        }
    }
}

/// A deviation the model saw: which, and on which message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Which deviation.
    pub deviation: Deviation,
    /// The message and what was wrong with it.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_deviation_is_a_rule_of_the_clients_strict_mode() {
        let own = [Deviation::OtherErrno, Deviation::UnexpectedFdsAccepted, Deviation::SetIrqsLenient];
        for d in Deviation::ALL.into_iter().filter(|d| !own.contains(d)) {
            assert!(strict::RULES.contains(&d.kind()), "{d:?}");
            assert_eq!(Deviation::from_rule(d.kind()), Some(d));
        }
        assert_eq!(Deviation::from_rule(strict::VERSION_MINOR_TOO_HIGH), None);
    }
}
