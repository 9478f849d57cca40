//! The registry of protocols and the per-connection parser that dispatches
//! to them. A protocol is one file in `protocols/` implementing [`Spec`]
//! (how it is recognised, which side is measured, how a parser starts) and
//! [`ConnParser`], plus one line in the `registry!` call below; the order
//! of that list is the order in which `detect` asks.
//!
//! A connection found mid-stream is not detected from its first bytes
//! (they are anywhere in a message): every candidate parser reads it until
//! one recognises a message.

use super::{
    detect::{Decision, Detection, Detector},
    http1::{H2cHandover, Http1Conn, Mode},
    http2::Http2Conn,
    mysql::MysqlConn,
    postgres::PgConn,
    redis::RedisConn,
    ConnParser, Exchange, ParserCounters, Piece, Side, Start, Verdict,
};

/// What the registry needs to know of a protocol besides its parser.
pub trait Spec: ConnParser + Sized {
    /// The `protocol` label of the pipeline's counters.
    const NAME: &'static str;

    /// A parser for one connection; allocates nothing until bytes arrive.
    fn start(side: Side, start: Start) -> Self;

    /// Whether these first bytes of a new connection are this protocol.
    /// `from_client` tells which direction spoke first; `bytes` holds what
    /// that direction sent so far (at least one byte, at most
    /// `detect::MAX_HELD`).
    fn detect(from_client: bool, bytes: &[u8]) -> Detection;

    /// Whether the traced process's `side` of a connection is measured.
    fn traced_on(side: Side) -> bool;
}

macro_rules! registry {
    ($($variant:ident => $parser:ty),+ $(,)?) => {
        /// The protocols the pipeline parses.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Protocol {
            $($variant),+
        }

        impl Protocol {
            /// Every protocol, in detection order.
            pub const ALL: &'static [Protocol] = &[$(Protocol::$variant),+];

            /// The `protocol` label of the pipeline's own counters.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => <$parser as Spec>::NAME),+
                }
            }

            /// See [`Spec::traced_on`].
            pub fn traced_on(self, side: Side) -> bool {
                match self {
                    $(Self::$variant => <$parser as Spec>::traced_on(side)),+
                }
            }

            /// See [`Spec::detect`].
            pub fn detect(self, from_client: bool, bytes: &[u8]) -> Detection {
                match self {
                    $(Self::$variant => <$parser as Spec>::detect(from_client, bytes)),+
                }
            }

        }

        /// One protocol's parser, boxed: parsers differ in size by a
        /// factor of two, and an inline one would make every connection in
        /// the table as large as the largest (an allocation per connection
        /// costs far less than its syscalls).
        #[derive(Debug)]
        enum Chosen {
            $($variant(Box<$parser>)),+
        }

        impl Chosen {
            fn of(protocol: Protocol, side: Side, start: Start) -> Self {
                match protocol {
                    $(Protocol::$variant => Self::$variant(Box::new(<$parser as Spec>::start(side, start)))),+
                }
            }

            fn get(&mut self) -> &mut dyn ConnParser {
                match self {
                    $(Self::$variant(parser) => &mut **parser),+
                }
            }
        }
    };
}

registry! {
    Http1 => Http1Conn,
    Http2 => Http2Conn,
    Postgres => PgConn,
    Mysql => MysqlConn,
    Redis => RedisConn,
}

impl Protocol {
    /// Position in [`Protocol::ALL`], for per-protocol counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The parser of one connection: detecting its protocol, then that
/// protocol's parser.
#[derive(Debug)]
pub struct Parser {
    side: Side,
    state: State,
}

#[derive(Debug)]
enum State {
    Detecting(Detector),
    /// Found mid-stream: every candidate parser reads the bytes until one
    /// recognises a message (see `Parser::mid_stream`).
    Guessing(Vec<Candidate>),
    Parsing(Protocol, Chosen),
    Done,
}

/// A mid-stream guess with what it made of the bytes so far, kept apart
/// until it wins.
#[derive(Debug)]
struct Candidate {
    protocol: Protocol,
    parser: Chosen,
    exchanges: Vec<Exchange>,
    counters: ParserCounters,
}

/// Exchanges a mid-stream guess may hold before it wins: none in
/// practice, since a guess that found a whole exchange has spoken.
const MAX_GUESS_EXCHANGES: usize = 64;

impl Parser {
    /// A new connection: the protocol is inferred from its first bytes.
    pub fn detect(side: Side) -> Self {
        Self {
            side,
            state: State::Detecting(Detector::new(side)),
        }
    }

    /// A connection known to speak `protocol` from its first byte (its
    /// server port has spoken it before).
    pub fn known(protocol: Protocol, side: Side) -> Self {
        let chosen = if protocol == Protocol::Http1 {
            // Junk sent to a known HTTP port is a counted resync.
            Chosen::Http1(Box::new(Http1Conn::new(side, Mode::KnownHttp)))
        } else {
            Chosen::of(protocol, side, Start::Fresh)
        };
        Self {
            side,
            state: State::Parsing(protocol, chosen),
        }
    }

    /// A connection found already open, at an unknown position: every
    /// protocol measured on this side seeks a message boundary in the same
    /// bytes, and the first to recognise a message takes the connection.
    /// The others' output is discarded, so a wrong guess costs only CPU,
    /// and only until the right one speaks. Ports play no part.
    pub fn mid_stream(side: Side) -> Self {
        let candidates: Vec<Candidate> = Protocol::ALL
            .iter()
            .filter(|p| p.traced_on(side))
            .map(|&protocol| Candidate {
                protocol,
                parser: Chosen::of(protocol, side, Start::MidStream),
                exchanges: Vec::new(),
                counters: ParserCounters::default(),
            })
            .collect();
        Self {
            side,
            state: State::Guessing(candidates),
        }
    }

    /// The protocol being parsed, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.state {
            State::Parsing(protocol, _) => Some(protocol),
            _ => None,
        }
    }

    /// One piece of one direction (see [`ConnParser::on_piece`]);
    /// `counters` is indexed by [`Protocol::index`].
    pub fn on_piece(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut [ParserCounters],
        out: &mut Vec<Exchange>,
    ) {
        if let State::Detecting(detector) = &mut self.state {
            let held = match detector.on_piece(outbound, piece, ts_ns) {
                Decision::Hold => return,
                Decision::GiveUp => {
                    self.state = State::Done;
                    return;
                }
                Decision::MidStream => {
                    *self = Self::mid_stream(self.side);
                    Vec::new()
                }
                Decision::Fresh(protocol) => {
                    let held = detector.take_held();
                    self.state =
                        State::Parsing(protocol, Chosen::of(protocol, self.side, Start::Fresh));
                    held
                }
                Decision::Junk => {
                    let held = detector.take_held();
                    let sniffing = Http1Conn::new(self.side, Mode::Sniff);
                    self.state = State::Parsing(Protocol::Http1, Chosen::Http1(Box::new(sniffing)));
                    held
                }
            };
            for (outbound, bytes, ts) in held {
                self.feed(outbound, Piece::Data(&bytes), ts, counters, out);
            }
        }
        self.feed(outbound, piece, ts_ns, counters, out);
    }

    fn feed(
        &mut self,
        outbound: bool,
        piece: Piece<'_>,
        ts_ns: u64,
        counters: &mut [ParserCounters],
        out: &mut Vec<Exchange>,
    ) {
        if let State::Guessing(candidates) = &mut self.state {
            self.state = guess(
                std::mem::take(candidates),
                outbound,
                piece,
                ts_ns,
                counters,
                out,
            );
            return;
        }
        let State::Parsing(protocol, chosen) = &mut self.state else {
            return;
        };
        let parser = chosen.get();
        parser.on_piece(outbound, piece, ts_ns, &mut counters[protocol.index()], out);
        if parser.verdict() != Verdict::Done {
            return;
        }
        if let Chosen::Http1(http1) = chosen {
            if let Some(handover) = http1.take_h2c_upgrade() {
                self.upgrade_to_http2(handover, counters, out);
            }
        }
    }

    /// `Upgrade: h2c` was accepted: HTTP/2 answers the upgraded request on
    /// stream 1, starting with the bytes that followed the 101.
    fn upgrade_to_http2(
        &mut self,
        handover: H2cHandover,
        counters: &mut [ParserCounters],
        out: &mut Vec<Exchange>,
    ) {
        let http2 = match handover.request {
            Some((method, path, start_ns)) => {
                Http2Conn::upgraded(self.side, method, path, start_ns)
            }
            // Reported as timed out already: its late answer is not.
            None => Http2Conn::new(self.side, Start::Fresh),
        };
        self.state = State::Parsing(Protocol::Http2, Chosen::Http2(Box::new(http2)));
        if !handover.rest.is_empty() {
            // The 101 came from the server: the traced server wrote it.
            let outbound = self.side == Side::Server;
            let rest = Piece::Data(&handover.rest);
            self.feed(outbound, rest, handover.rest_ts, counters, out);
        }
    }

    /// See [`ConnParser::on_close`].
    pub fn on_close(
        &mut self,
        ts_ns: u64,
        counters: &mut [ParserCounters],
        out: &mut Vec<Exchange>,
    ) {
        if let State::Parsing(protocol, chosen) = &mut self.state {
            chosen
                .get()
                .on_close(ts_ns, &mut counters[protocol.index()], out);
        }
    }

    /// See [`ConnParser::expire`].
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        if let State::Parsing(_, chosen) = &mut self.state {
            chosen.get().expire(now_ns, timeout_ns, out);
        }
    }

    /// What the connection turned out to be; `Done` once no parser will
    /// take its bytes.
    pub fn verdict(&mut self) -> Verdict {
        match &mut self.state {
            State::Detecting(_) | State::Guessing(_) => Verdict::Unknown,
            State::Parsing(_, chosen) => chosen.get().verdict(),
            State::Done => Verdict::Done,
        }
    }
}

/// Feeds one piece to every mid-stream candidate: the first to speak wins
/// (its exchanges and counts become real), those that give up drop out.
fn guess(
    mut candidates: Vec<Candidate>,
    outbound: bool,
    piece: Piece<'_>,
    ts_ns: u64,
    counters: &mut [ParserCounters],
    out: &mut Vec<Exchange>,
) -> State {
    for candidate in &mut candidates {
        let parser = candidate.parser.get();
        parser.on_piece(
            outbound,
            piece,
            ts_ns,
            &mut candidate.counters,
            &mut candidate.exchanges,
        );
        candidate.exchanges.truncate(MAX_GUESS_EXCHANGES);
    }
    candidates.retain_mut(|c| c.parser.get().verdict() != Verdict::Done);
    let winner = candidates
        .iter_mut()
        .position(|c| c.parser.get().verdict() == Verdict::Speaks);
    match winner {
        Some(at) => {
            let won = candidates.swap_remove(at);
            out.extend(won.exchanges);
            counters[won.protocol.index()].add(&won.counters);
            State::Parsing(won.protocol, won.parser)
        }
        None if candidates.is_empty() => State::Done,
        None => State::Guessing(candidates),
    }
}
