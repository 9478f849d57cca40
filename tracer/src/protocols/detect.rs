//! Protocol inference for a new connection: holds its first bytes until a
//! registered protocol recognises them (in registry order), then hands
//! them to that protocol's parser. Ports play no part here; they only
//! order the guesses for connections found mid-stream (see `dispatch`).
//!
//! Most connections are decided on their first piece, which is then not
//! copied at all; only a first piece too short to tell is held, and only
//! up to `MAX_HELD` bytes.

use super::{dispatch::Protocol, Piece, Side};

/// Bytes of the first direction looked at: enough for the HTTP/2 preface
/// (24 bytes), a PostgreSQL start-up header (8), a MySQL greeting's
/// version string, or any HTTP/1 method.
pub const MAX_HELD: usize = 64;

/// Pieces held while undecided; a peer that sends its first bytes one
/// at a time beyond this is not a protocol we parse.
const MAX_HELD_PIECES: usize = 16;

/// A protocol's answer to a connection's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Yes,
    No,
    /// These bytes are a prefix of what the protocol would send.
    NeedMore,
}

/// What the detector decided about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Undecided: the piece was held.
    Hold,
    /// This protocol, from its first byte.
    Fresh(Protocol),
    /// The client spoke first in no protocol we know: let HTTP/1 watch
    /// whether the server answers in HTTP (junk sent to an HTTP server is
    /// then a counted resync) and give up otherwise.
    Junk,
    /// The start was not seen (a gap came first): guess mid-stream.
    MidStream,
    /// Nothing to parse here: stop copying the connection.
    GiveUp,
}

/// One connection's first bytes, until a protocol claims them.
#[derive(Debug)]
pub struct Detector {
    side: Side,
    /// What the first direction to speak sent, up to `MAX_HELD` bytes.
    prefix: Vec<u8>,
    /// Whether the client spoke first; None before any byte.
    from_client: Option<bool>,
    /// Pieces to replay to the chosen parser: (outbound, bytes, ts).
    held: Vec<(bool, Vec<u8>, u64)>,
}

impl Detector {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            prefix: Vec::new(),
            from_client: None,
            held: Vec::new(),
        }
    }

    /// Looks at one more piece. Unless the answer is `Hold`, the caller
    /// replays `take_held()` and then this piece to the chosen parser.
    pub fn on_piece(&mut self, outbound: bool, piece: Piece<'_>, ts_ns: u64) -> Decision {
        let bytes = match piece {
            Piece::Data([]) | Piece::Gap(0) => return Decision::Hold,
            Piece::Data(bytes) => bytes,
            Piece::Gap(_) => return Decision::MidStream,
        };
        let from_client = outbound == (self.side == Side::Client);
        let first = *self.from_client.get_or_insert(from_client);
        if from_client == first && self.prefix.len() < MAX_HELD {
            let take = bytes.len().min(MAX_HELD - self.prefix.len());
            self.prefix.extend_from_slice(&bytes[..take]);
        }
        let decision = self.decide(first);
        if decision == Decision::Hold {
            if self.held.len() >= MAX_HELD_PIECES || self.prefix.len() >= MAX_HELD {
                return self.give_up_or_junk(first);
            }
            self.held.push((outbound, bytes.to_vec(), ts_ns));
        }
        decision
    }

    fn decide(&self, from_client: bool) -> Decision {
        let mut maybe = false;
        for &protocol in Protocol::ALL {
            match protocol.detect(from_client, &self.prefix) {
                Detection::Yes if protocol.traced_on(self.side) => {
                    return Decision::Fresh(protocol)
                }
                Detection::Yes => return Decision::GiveUp,
                Detection::NeedMore => maybe = true,
                Detection::No => {}
            }
        }
        if maybe {
            Decision::Hold
        } else {
            self.give_up_or_junk(from_client)
        }
    }

    fn give_up_or_junk(&self, from_client: bool) -> Decision {
        if from_client {
            Decision::Junk
        } else {
            // A server that speaks first in no protocol we know (SMTP, SSH).
            Decision::GiveUp
        }
    }

    /// The held pieces, oldest first, for replay.
    pub fn take_held(&mut self) -> Vec<(bool, Vec<u8>, u64)> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(side: Side, outbound: bool, bytes: &[u8]) -> Decision {
        Detector::new(side).on_piece(outbound, Piece::Data(bytes), 1)
    }

    #[test]
    fn http1_request_is_recognised_from_either_side() {
        let req = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            first(Side::Server, false, req),
            Decision::Fresh(Protocol::Http1)
        );
        assert_eq!(
            first(Side::Client, true, req),
            Decision::Fresh(Protocol::Http1)
        );
    }

    #[test]
    fn split_method_is_held_then_decided() {
        let mut d = Detector::new(Side::Server);
        assert_eq!(d.on_piece(false, Piece::Data(b"GE"), 1), Decision::Hold);
        assert_eq!(
            d.on_piece(false, Piece::Data(b"T / HTTP/1.1\r\n"), 2),
            Decision::Fresh(Protocol::Http1)
        );
        assert_eq!(d.take_held(), vec![(false, b"GE".to_vec(), 1)]);
    }

    #[test]
    fn junk_from_the_client_goes_to_http1_sniffing_and_a_talking_server_is_given_up() {
        assert_eq!(
            first(Side::Server, false, b"\x16\x03\x01\x02\x00"),
            Decision::Junk
        );
        assert_eq!(
            first(Side::Client, false, b"SSH-2.0-OpenSSH_9.2\r\n"),
            Decision::GiveUp
        );
    }

    #[test]
    fn a_gap_first_means_mid_stream() {
        assert_eq!(
            Detector::new(Side::Server).on_piece(false, Piece::Gap(10), 1),
            Decision::MidStream
        );
    }

    #[test]
    fn byte_at_a_time_junk_is_bounded() {
        let mut d = Detector::new(Side::Server);
        let mut last = Decision::Hold;
        for i in 0..100u64 {
            last = d.on_piece(false, Piece::Data(b"G"), i);
            if last != Decision::Hold {
                break;
            }
        }
        assert_ne!(last, Decision::Hold);
        assert!(d.held.len() <= MAX_HELD_PIECES);
    }
}
