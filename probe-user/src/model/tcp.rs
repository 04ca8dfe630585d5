//! TCP header details that user space decodes from raw bytes the kernel sent
//! up: the options of a SYN or SYN-ACK, and what a TTL says about distance.

use serde::Serialize;
use thiserror::Error;

/// The options a SYN-ACK announces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpOptions {
    /// Maximum segment size, bytes.
    pub mss: Option<u16>,
    /// Window scale shift count.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack_permitted: bool,
    /// Timestamps option present (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("option kind {kind} at offset {offset} runs past the end of the options")]
    Truncated { kind: u8, offset: usize },
    #[error("option kind {kind} at offset {offset} has invalid length {len}")]
    BadLength { kind: u8, offset: usize, len: u8 },
}

/// Parses the option bytes of a TCP header (after the 20 fixed bytes).
///
/// Unknown options are skipped by their length; malformed ones are an error
/// (what was parsed before them is lost, as a receiving stack would drop the
/// segment).
pub fn parse_options(b: &[u8]) -> Result<TcpOptions, OptionError> {
    let mut o = TcpOptions::default();
    let mut i = 0;
    while i < b.len() {
        let kind = b[i];
        match kind {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let len = *b
            .get(i + 1)
            .ok_or(OptionError::Truncated { kind, offset: i })?;
        if len < 2 {
            return Err(OptionError::BadLength {
                kind,
                offset: i,
                len,
            });
        }
        let body = b
            .get(i + 2..i + len as usize)
            .ok_or(OptionError::Truncated { kind, offset: i })?;
        let want = match kind {
            2 => Some(4),
            3 => Some(3),
            4 => Some(2),
            8 => Some(10),
            _ => None,
        };
        if let Some(w) = want
            && w != len
        {
            return Err(OptionError::BadLength {
                kind,
                offset: i,
                len,
            });
        }
        match kind {
            2 => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            3 => o.wscale = Some(body[0]),
            4 => o.sack_permitted = true,
            8 => {
                let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                o.timestamps = Some((v, e));
            }
            _ => {}
        }
        i += len as usize;
    }
    Ok(o)
}

/// The initial TTL a received TTL most likely started from, and the hops it
/// implies. Stacks start at 64 (Linux, BSD, macOS), 128 (Windows) or 255
/// (network gear); 32 and 60 are too rare today to be worth a wrong guess.
pub(crate) fn hops_from_ttl(ttl: u8) -> (u8, u8) {
    let initial = if ttl <= 64 {
        64
    } else if ttl <= 128 {
        128
    } else {
        255
    };
    (initial, initial - ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_syn_ack_options() {
        // MSS 1460, SACK permitted, TS, NOP, WS 7 (the order Linux uses)
        let b = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7,
        ];
        let o = parse_options(&b).unwrap();
        assert_eq!(o.mss, Some(1460));
        assert!(o.sack_permitted);
        assert_eq!(o.timestamps, Some((1, 2)));
        assert_eq!(o.wscale, Some(7));
    }

    #[test]
    fn padding_eol_and_unknown_options() {
        let b = [1, 1, 30, 4, 0xaa, 0xbb, 2, 4, 0x02, 0x18, 0, 9, 9, 9];
        let o = parse_options(&b).unwrap();
        assert_eq!(o.mss, Some(536));
        assert_eq!(o.wscale, None);
        assert!(!o.sack_permitted);
    }

    #[test]
    fn malformed_options() {
        assert_eq!(
            parse_options(&[2, 4, 5]),
            Err(OptionError::Truncated { kind: 2, offset: 0 })
        );
        assert_eq!(
            parse_options(&[1, 3, 1, 7]),
            Err(OptionError::BadLength {
                kind: 3,
                offset: 1,
                len: 1
            })
        );
        assert_eq!(
            parse_options(&[2, 5, 0, 0, 0]),
            Err(OptionError::BadLength {
                kind: 2,
                offset: 0,
                len: 5
            })
        );
        assert_eq!(
            parse_options(&[8]),
            Err(OptionError::Truncated { kind: 8, offset: 0 })
        );
        assert_eq!(parse_options(&[]), Ok(TcpOptions::default()));
    }

    #[test]
    fn ttl_to_hops() {
        assert_eq!(hops_from_ttl(64), (64, 0));
        assert_eq!(hops_from_ttl(63), (64, 1));
        assert_eq!(hops_from_ttl(120), (128, 8));
        assert_eq!(hops_from_ttl(255), (255, 0));
        assert_eq!(hops_from_ttl(1), (64, 63));
    }
}
