//! HTTP/2 frame boundaries in a connection's plaintext, one direction: the
//! scanner tells where a response's HEADERS frame and a PING's answer
//! begin, which the wire times are measured to. Pure: bytes in, frame
//! starts out; it reads the 9-byte frame headers only (RFC 9113 4.1).

/// The 24-byte client connection preface that starts the client's side.
pub(crate) const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types the scanner reports.
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PING: u8 = 0x6;
/// The ACK flag of SETTINGS and PING.
pub(crate) const ACK: u8 = 0x1;

/// The start of a frame, as the scanner saw its header complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameStart {
    /// Offset of the frame's first byte in this direction's plaintext.
    pub offset: u64,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// Payload length.
    pub len: u32,
}

/// Splits one direction's plaintext into frames as it arrives in pieces.
#[derive(Clone, Debug, Default)]
pub(crate) struct FrameScanner {
    /// Preface bytes still to skip (the client's side begins with one).
    skip_preface: usize,
    /// Header bytes of the current frame seen so far (0..9).
    hdr: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame not yet passed.
    left: u64,
    /// Offset of the next byte.
    offset: u64,
    /// Offset of the current frame's first byte.
    frame_at: u64,
    /// The current frame is a stream's HEADERS, DATA or CONTINUATION.
    in_stream_frame: bool,
}

/// A stream's HEADERS, DATA or CONTINUATION: what a request (or a
/// response) is made of, as against the connection's own frames.
pub(crate) fn is_stream_frame(f: &FrameStart) -> bool {
    f.stream != 0 && matches!(f.kind, 0x0 | HEADERS | 0x9)
}

impl FrameScanner {
    /// A scanner for the server's side (frames from the first byte).
    pub(crate) fn server_side() -> Self {
        Self::default()
    }

    /// A scanner for the client's side (the preface, then frames).
    pub(crate) fn client_side() -> Self {
        FrameScanner {
            skip_preface: CLIENT_PREFACE.len(),
            ..Self::default()
        }
    }

    /// The offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the next bytes; returns the frames whose headers completed in
    /// them, in order.
    pub(crate) fn feed(&mut self, b: &[u8]) -> Vec<FrameStart> {
        self.feed_marked(b).0
    }

    /// As `feed`, and whether any of the bytes belonged to a stream's
    /// HEADERS, DATA or CONTINUATION frame (its header or its payload: a
    /// large body's payload comes in writes of its own).
    pub(crate) fn feed_marked(&mut self, mut b: &[u8]) -> (Vec<FrameStart>, bool) {
        let mut out = Vec::new();
        let mut stream_bytes = false;
        while !b.is_empty() {
            if self.skip_preface > 0 {
                let n = self.skip_preface.min(b.len());
                self.skip_preface -= n;
                self.offset += n as u64;
                b = &b[n..];
                continue;
            }
            if self.left > 0 {
                let n = (self.left.min(b.len() as u64)) as usize;
                stream_bytes |= self.in_stream_frame;
                self.left -= n as u64;
                self.offset += n as u64;
                b = &b[n..];
                continue;
            }
            if self.have == 0 {
                self.frame_at = self.offset;
            }
            let n = (9 - self.have).min(b.len());
            self.hdr[self.have..self.have + n].copy_from_slice(&b[..n]);
            self.have += n;
            self.offset += n as u64;
            b = &b[n..];
            if self.have == 9 {
                let h = self.hdr;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                let f = FrameStart {
                    offset: self.frame_at,
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    len,
                };
                self.in_stream_frame = is_stream_frame(&f);
                stream_bytes |= self.in_stream_frame;
                out.push(f);
                self.have = 0;
                self.left = u64::from(len);
            }
        }
        (out, stream_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend([kind, flags]);
        v.extend(stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn frames_are_found_across_any_split() {
        // SETTINGS, SETTINGS ACK, WINDOW_UPDATE, HEADERS on stream 1, DATA,
        // a PING ACK: every way of cutting the bytes gives the same frames.
        let mut s = frame(0x4, 0, 0, &[0; 18]);
        s.extend(frame(0x4, ACK, 0, &[]));
        s.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0]));
        let headers_at = s.len() as u64;
        s.extend(frame(HEADERS, 0x4, 1, &[0x88]));
        s.extend(frame(0x0, 0x1, 1, b"hello"));
        let ping_at = s.len() as u64;
        s.extend(frame(PING, ACK, 0, &[7; 8]));
        let whole = FrameScanner::server_side().feed(&s);
        assert_eq!(whole.len(), 6);
        assert_eq!(
            whole[3],
            FrameStart {
                offset: headers_at,
                kind: HEADERS,
                flags: 0x4,
                stream: 1,
                len: 1
            }
        );
        assert_eq!(
            (whole[5].offset, whole[5].kind, whole[5].flags),
            (ping_at, PING, ACK)
        );
        for cut in [1, 3, 9, 10, 17, 40] {
            let mut sc = FrameScanner::server_side();
            let got: Vec<FrameStart> = s.chunks(cut).flat_map(|c| sc.feed(c)).collect();
            assert_eq!(got, whole, "chunks of {cut}");
        }
    }

    #[test]
    fn a_bodys_payload_in_a_write_of_its_own_is_the_streams() {
        // A DATA frame's header, then its payload in a later write, then a
        // WINDOW_UPDATE on the connection.
        let data = frame(0x0, 0x1, 1, &[7; 4000]);
        let mut sc = FrameScanner::server_side();
        let (f, marked) = sc.feed_marked(&data[..9]);
        assert_eq!((f.len(), marked), (1, true));
        let (f, marked) = sc.feed_marked(&data[9..]);
        assert_eq!((f.len(), marked), (0, true));
        let (f, marked) = sc.feed_marked(&frame(0x8, 0, 0, &[0, 0, 1, 0]));
        assert_eq!((f.len(), marked), (1, false));
        // A PING's payload is not a stream's.
        let ping = frame(PING, 0, 0, &[1; 8]);
        sc.feed_marked(&ping[..9]);
        assert!(!sc.feed_marked(&ping[9..]).1);
    }

    #[test]
    fn the_client_side_skips_its_preface() {
        let mut s = CLIENT_PREFACE.to_vec();
        s.extend(frame(0x4, 0, 0, &[0; 12]));
        let ping_at = s.len() as u64;
        s.extend(frame(PING, 0, 0, &[1; 8]));
        let mut sc = FrameScanner::client_side();
        let got: Vec<FrameStart> = s.chunks(5).flat_map(|c| sc.feed(c)).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].offset, got[1].kind, got[1].flags),
            (ping_at, PING, 0)
        );
        // The stream id's reserved bit is not part of it.
        let mut sc = FrameScanner::server_side();
        let f = sc.feed(&frame(HEADERS, 0, 0x8000_0003, &[]));
        assert_eq!(f[0].stream, 3);
    }
}
