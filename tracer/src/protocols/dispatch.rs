//! The registry of protocols and the per-connection parser that dispatches
//! to them. A protocol is one file in `protocols/` implementing [`Spec`]
//! (how it is recognised, which side is measured, how a parser starts) and
//! [`ConnParser`], plus one line in the `registry!` call below; the order
//! of that list is the order in which `detect` asks.

use super::{
    detect::{Decision, Detection, Detector},
    http1::{Http1Conn, Mode},
    postgres::PgConn,
    ConnParser, Exchange, ParserCounters, Piece, Side, Start, Verdict,
};

/// What the registry needs to know of a protocol besides its parser.
pub trait Spec: ConnParser + Sized {
    /// The `protocol` label of the pipeline's counters.
    const NAME: &'static str;

    /// Server ports that suggest this protocol for a connection found
    /// mid-stream: a hint that orders the guesses, never a rule.
    const PORT_HINTS: &'static [u16] = &[];

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

            fn port_hints(self) -> &'static [u16] {
                match self {
                    $(Self::$variant => <$parser as Spec>::PORT_HINTS),+
                }
            }
        }

        /// One protocol's parser.
        #[derive(Debug)]
        enum Chosen {
            $($variant($parser)),+
        }

        impl Chosen {
            fn of(protocol: Protocol, side: Side, start: Start) -> Self {
                match protocol {
                    $(Protocol::$variant => Self::$variant(<$parser as Spec>::start(side, start))),+
                }
            }

            fn get(&mut self) -> &mut dyn ConnParser {
                match self {
                    $(Self::$variant(parser) => parser),+
                }
            }
        }
    };
}

registry! {
    Http1 => Http1Conn,
    Postgres => PgConn,
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
    /// Protocols still to try if the current mid-stream guess gives up
    /// before it recognises a message; next guess last.
    guesses: Vec<Protocol>,
    /// The current parser recognised a message.
    spoke: bool,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "most connections are parsing: boxing would cost an allocation each"
)]
enum State {
    Detecting(Detector, u16),
    Parsing(Protocol, Chosen),
    Done,
}

impl Parser {
    /// A new connection whose server listens on `server_port`: the
    /// protocol is inferred from its first bytes.
    pub fn detect(side: Side, server_port: u16) -> Self {
        Self {
            side,
            state: State::Detecting(Detector::new(side), server_port),
            guesses: Vec::new(),
            spoke: false,
        }
    }

    /// A connection known to speak `protocol` from its first byte (its
    /// server port has spoken it before).
    pub fn known(protocol: Protocol, side: Side) -> Self {
        let chosen = if protocol == Protocol::Http1 {
            // Junk sent to a known HTTP port is a counted resync.
            Chosen::Http1(Http1Conn::new(side, Mode::KnownHttp))
        } else {
            Chosen::of(protocol, side, Start::Fresh)
        };
        Self {
            side,
            state: State::Parsing(protocol, chosen),
            guesses: Vec::new(),
            spoke: false,
        }
    }

    /// A connection found already open: each protocol in turn seeks a
    /// message boundary, those the server port suggests first.
    pub fn mid_stream(side: Side, server_port: u16) -> Self {
        let mut parser = Self {
            side,
            state: State::Done,
            guesses: guesses(side, server_port),
            spoke: false,
        };
        parser.next_guess();
        parser
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
        if let State::Detecting(detector, server_port) = &mut self.state {
            let server_port = *server_port;
            let held = match detector.on_piece(outbound, piece, ts_ns) {
                Decision::Hold => return,
                Decision::GiveUp => {
                    self.state = State::Done;
                    return;
                }
                Decision::MidStream => {
                    *self = Self::mid_stream(self.side, server_port);
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
                    self.state = State::Parsing(Protocol::Http1, Chosen::Http1(sniffing));
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
        let State::Parsing(protocol, chosen) = &mut self.state else {
            return;
        };
        let parser = chosen.get();
        parser.on_piece(outbound, piece, ts_ns, &mut counters[protocol.index()], out);
        match parser.verdict() {
            Verdict::Speaks => self.spoke = true,
            Verdict::Done if !self.spoke => self.next_guess(),
            _ => {}
        }
    }

    /// The current guess gave up before recognising anything: the next
    /// one takes the connection from here (or nothing does).
    fn next_guess(&mut self) {
        self.state = match self.guesses.pop() {
            Some(protocol) => {
                State::Parsing(protocol, Chosen::of(protocol, self.side, Start::MidStream))
            }
            None => State::Done,
        };
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
            State::Detecting(..) => Verdict::Unknown,
            State::Parsing(_, chosen) => chosen.get().verdict(),
            State::Done => Verdict::Done,
        }
    }
}

/// Mid-stream guesses for a server port, to be popped: the protocols whose
/// hints name the port first, then the rest in registry order; only those
/// measured on this side.
fn guesses(side: Side, server_port: u16) -> Vec<Protocol> {
    let (mut hinted, rest): (Vec<Protocol>, Vec<Protocol>) = Protocol::ALL
        .iter()
        .copied()
        .filter(|p| p.traced_on(side))
        .partition(|p| p.port_hints().contains(&server_port));
    hinted.extend(rest);
    hinted.reverse();
    hinted
}
