//! What the SQL protocols may say about a statement: its verb and, for a
//! simple statement, the one table it names. Used by the PostgreSQL and
//! MySQL parsers on the statement text they see; the text itself never
//! leaves this module, but for the deciding prefixes `sql_memo.rs` keeps in
//! memory (at most 4 of 256 bytes per connection, never shown by `Debug`).
//!
//! This is a tokenizer, not a SQL parser: it skips comments, string
//! literals and quoted identifiers the way each dialect writes them, and
//! looks at top-level keywords only. Anything it is unsure of gives no
//! collection rather than a wrong one; a first word that is not a known
//! verb gives `_OTHER`, so neither garbage nor data can become a label.

/// Which server's lexical rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `'..'` with `''`, `E'..'` with backslashes, `".."` identifiers,
    /// `$tag$..$tag$`, nested `/* */`.
    Postgres,
    /// `'..'` and `".."` strings with backslashes, `` `..` `` identifiers,
    /// `#` and `-- ` comments.
    Mysql,
}

/// A statement's verb and table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Upper-case verb from [`VERBS`], or `_OTHER`.
    pub operation: &'static str,
    /// The single table of a simple SELECT/INSERT/UPDATE/DELETE/COPY.
    pub collection: Option<String>,
}

/// Verbs reported as they are; any other first word is `_OTHER`.
pub const VERBS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DESCRIBE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "FLUSH",
    "GRANT",
    "HANDLER",
    "INSERT",
    "KILL",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "OPTIMIZE",
    "PREPARE",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UNLOCK",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
    "XA",
];

/// The operation of a statement that is not a known verb.
pub const OTHER: &str = "_OTHER";

/// Longest table name reported (MySQL's limit; PostgreSQL's is 63).
const MAX_NAME: usize = 64;

/// Tokens examined per statement: summaries look near the start, and a
/// statement of megabytes must not cost megabytes of scanning.
const MAX_TOKENS: usize = 4096;

/// The verb and table of one statement.
pub fn summarize(statement: &[u8], dialect: Dialect) -> Summary {
    summarize_reading(statement, dialect).0
}

/// `summarize`, and how many leading bytes of the statement it looked at:
/// every statement that starts with those bytes has the same summary.
/// When that is all of the statement, its end was looked at too, and only
/// the same statement has the same summary for certain.
pub fn summarize_reading(statement: &[u8], dialect: Dialect) -> (Summary, usize) {
    let mut tokens = Tokens::new(statement, dialect);
    let summary = summarize_tokens((&mut tokens).take(MAX_TOKENS).peekable());
    (summary, tokens.reached.min(statement.len()))
}

fn summarize_tokens(mut tokens: Stream<'_, '_>) -> Summary {
    let Some(Token::Word(first)) = tokens.next() else {
        return other();
    };
    let Some(verb) = verb(first) else {
        return other();
    };
    let collection = match verb {
        "SELECT" => after_from(&mut tokens),
        "INSERT" | "REPLACE" => {
            skip_words(
                &mut tokens,
                &["IGNORE", "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY"],
            );
            skip_words(&mut tokens, &["INTO"]);
            table(&mut tokens)
        }
        "UPDATE" => {
            skip_words(&mut tokens, &["ONLY", "LOW_PRIORITY", "IGNORE"]);
            single_table(&mut tokens, &["SET"])
        }
        "DELETE" => {
            skip_words(&mut tokens, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            match tokens.next() {
                Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"FROM") => {
                    skip_words(&mut tokens, &["ONLY"]);
                    single_table(&mut tokens, &["WHERE", "RETURNING", "ORDER", "LIMIT"])
                }
                _ => None,
            }
        }
        "COPY" => table(&mut tokens),
        "WITH" => return with_verb(tokens),
        _ => None,
    };
    Summary {
        operation: verb,
        collection,
    }
}

/// Splits a multi-statement query at top-level semicolons, dropping empty
/// statements (a server runs none for them).
pub fn statements(text: &[u8], dialect: Dialect) -> impl Iterator<Item = &[u8]> {
    let mut tokens = Tokens::new(text, dialect);
    let mut start = 0;
    let mut done = false;
    // Without a semicolon byte there is no separator to find, and the text
    // (mostly literals) need not be tokenized to the end to learn that.
    let unsplit = !text.contains(&b';');
    std::iter::from_fn(move || {
        while !done {
            let separator = if unsplit {
                None
            } else {
                tokens.find(|t| *t == Token::Punct(b';'))
            };
            let (piece, next) = match separator {
                Some(_) => (&text[start..tokens.at - 1], tokens.at),
                None => {
                    done = true;
                    (&text[start.min(text.len())..], text.len())
                }
            };
            start = next;
            if Tokens::new(piece, dialect).next().is_some() {
                return Some(piece);
            }
        }
        None
    })
}

fn other() -> Summary {
    Summary {
        operation: OTHER,
        collection: None,
    }
}

/// A word of up to 16 bytes as one number: its bytes in order, upper-cased,
/// zero-padded. Numbers compare as the words do (no word holds a NUL), so
/// a sorted table of them is searched without comparing byte strings.
const fn packed(word: &[u8]) -> Option<u128> {
    if word.len() > 16 {
        return None;
    }
    let mut value = 0u128;
    let mut i = 0;
    while i < 16 {
        let b = if i < word.len() {
            word[i].to_ascii_uppercase()
        } else {
            0
        };
        value = (value << 8) | b as u128;
        i += 1;
    }
    Some(value)
}

/// `VERBS` packed, in the same (sorted) order.
const PACKED_VERBS: [u128; VERBS.len()] = {
    let mut table = [0; VERBS.len()];
    let mut i = 0;
    while i < VERBS.len() {
        table[i] = match packed(VERBS[i].as_bytes()) {
            Some(v) => v,
            None => panic!("verbs are short"),
        };
        i += 1;
    }
    table
};

/// The entry of `VERBS` that `word` is, ignoring ASCII case: every
/// statement's first word comes here.
fn verb(word: &[u8]) -> Option<&'static str> {
    // `packed`, a whole word at a time.
    let mut bytes = [0u8; 16];
    bytes.get_mut(..word.len())?.copy_from_slice(word);
    bytes.make_ascii_uppercase();
    let key = u128::from_be_bytes(bytes);
    let i = PACKED_VERBS.binary_search(&key).ok()?;
    VERBS.get(i).copied()
}

type Stream<'t, 'a> = std::iter::Peekable<std::iter::Take<&'t mut Tokens<'a>>>;

/// `WITH ... AS (...) verb`: the verb of the main statement.
fn with_verb(tokens: Stream<'_, '_>) -> Summary {
    let mut depth = 0u32;
    for token in tokens {
        match token {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 => {
                if let Some(v @ ("SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE")) = verb(w) {
                    return Summary {
                        operation: v,
                        collection: None,
                    };
                }
            }
            _ => {}
        }
    }
    other()
}

/// SELECT: the one table after the top-level FROM.
fn after_from(tokens: &mut Stream<'_, '_>) -> Option<String> {
    let mut depth = 0u32;
    while let Some(token) = tokens.next() {
        match token {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 && w.eq_ignore_ascii_case(b"FROM") => {
                skip_words(tokens, &["ONLY"]);
                return single_table(
                    tokens,
                    &[
                        "WHERE",
                        "GROUP",
                        "ORDER",
                        "LIMIT",
                        "OFFSET",
                        "FOR",
                        "HAVING",
                        "WINDOW",
                        "FETCH",
                        "UNION",
                        "EXCEPT",
                        "INTERSECT",
                        "INTO",
                        "LOCK",
                    ],
                );
            }
            _ => {}
        }
    }
    None
}

/// A table name followed by an optional alias and then the end or one of
/// `then` (a join or a second table means no single collection).
fn single_table(tokens: &mut Stream<'_, '_>, then: &[&str]) -> Option<String> {
    let name = table(tokens)?;
    let ends = |t: &Option<&Token<'_>>| match t {
        None | Some(Token::Punct(b';')) => true,
        Some(Token::Word(w)) => then.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(w)),
        _ => false,
    };
    if ends(&tokens.peek()) {
        return Some(name);
    }
    // An alias: `t AS a` or `t a`.
    if let Some(Token::Word(w)) = tokens.peek() {
        if w.eq_ignore_ascii_case(b"AS") {
            tokens.next();
        }
    }
    match tokens.next() {
        Some(Token::Word(_) | Token::Quoted(_)) if ends(&tokens.peek()) => Some(name),
        _ => None,
    }
}

/// A possibly qualified table name (`s.t`, `"s"."t"`), as written without
/// quotes.
fn table(tokens: &mut Stream<'_, '_>) -> Option<String> {
    let mut name = String::new();
    loop {
        let part = match tokens.next()? {
            Token::Word(w) if !is_reserved(w) => w,
            Token::Quoted(q) => q,
            _ => return None,
        };
        if !part
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'-')
        {
            return None;
        }
        name.push_str(std::str::from_utf8(part).ok()?);
        if name.len() > MAX_NAME {
            return None;
        }
        if tokens.peek() != Some(&Token::Punct(b'.')) {
            return (!name.is_empty()).then_some(name);
        }
        tokens.next();
        name.push('.');
    }
}

/// Words that cannot be a table name where one is expected.
fn is_reserved(word: &[u8]) -> bool {
    [
        "SELECT", "VALUES", "SET", "WHERE", "FROM", "LATERAL", "TABLE", "DEFAULT",
    ]
    .iter()
    .any(|k| k.as_bytes().eq_ignore_ascii_case(word))
}

fn skip_words(tokens: &mut Stream<'_, '_>, words: &[&str]) {
    while let Some(Token::Word(w)) = tokens.peek() {
        if !words.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(w)) {
            return;
        }
        tokens.next();
    }
}

/// Byte classes, looked up per byte of a word or number rather than
/// tested as a chain of comparisons.
const WORD_BYTE: u8 = 1; // continues a word: alphanumeric, `_`, `$`, non-ASCII
const NUMBER_BYTE: u8 = 2; // continues a number: alphanumeric, `.`, `_`
const BLANK_START: u8 = 4; // may start a blank or a comment (`skip_blank`)

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        if alnum || c == b'_' || c == b'$' || c >= 0x80 {
            table[b] |= WORD_BYTE;
        }
        if alnum || c == b'.' || c == b'_' {
            table[b] |= NUMBER_BYTE;
        }
        if c.is_ascii_whitespace() || matches!(c, 0 | b'-' | b'#' | b'/') {
            table[b] |= BLANK_START;
        }
        b += 1;
    }
    table
};

fn is(class: u8, b: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A keyword or unquoted identifier.
    Word(&'a [u8]),
    /// A quoted identifier, without its quotes.
    Quoted(&'a [u8]),
    /// A string or number literal (its content is never looked at).
    Literal,
    Punct(u8),
}

struct Tokens<'a> {
    text: &'a [u8],
    at: usize,
    dialect: Dialect,
    /// No byte at or past this has been looked at (it may exceed the
    /// text's length).
    reached: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a [u8], dialect: Dialect) -> Self {
        Self {
            text,
            at: 0,
            dialect,
            reached: 0,
        }
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.at + offset).copied()
    }

    /// Skips whitespace and comments; false at the end.
    fn skip_blank(&mut self) -> bool {
        loop {
            // Most tokens follow nothing or a space: decided on one byte.
            match self.peek_at(0) {
                None => return false,
                Some(b) if !is(BLANK_START, b) => return true,
                Some(_) => {}
            }
            match (self.peek_at(0), self.peek_at(1)) {
                (None, _) => return false,
                // mysqlslap ends its statements with a NUL.
                (Some(b), _) if b.is_ascii_whitespace() || b == 0 => self.at += 1,
                (Some(b'-'), Some(b'-'))
                    if self.dialect == Dialect::Postgres
                        || self.peek_at(2).is_none_or(|c| c.is_ascii_whitespace()) =>
                {
                    self.skip_line()
                }
                (Some(b'#'), _) if self.dialect == Dialect::Mysql => self.skip_line(),
                (Some(b'/'), Some(b'*')) => self.skip_block_comment(),
                _ => return true,
            }
        }
    }

    fn skip_line(&mut self) {
        let rest = self.text.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
    }

    /// Moves past the bytes from `self.at` on that satisfy `keep`.
    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        let rest = self.text.get(self.at..).unwrap_or_default();
        self.at += rest.iter().position(|&b| !keep(b)).unwrap_or(rest.len());
    }

    fn skip_block_comment(&mut self) {
        // PostgreSQL nests block comments; MySQL does not.
        let nests = self.dialect == Dialect::Postgres;
        self.at += 2;
        let mut depth = 1u32;
        while let Some(b) = self.peek_at(0) {
            match (b, self.peek_at(1)) {
                (b'*', Some(b'/')) => {
                    self.at += 2;
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                (b'/', Some(b'*')) if nests => {
                    self.at += 2;
                    depth += 1;
                }
                _ => self.at += 1,
            }
        }
    }

    /// Skips a quoted run opened by `quote` at `self.at`; returns its
    /// content. `backslash`: a backslash escapes the next byte.
    fn quoted(&mut self, quote: u8, backslash: bool) -> &'a [u8] {
        self.at += 1;
        let start = self.at;
        // Jumps from one quote or backslash to the next: literals (long
        // strings of data) are most of many statements' bytes.
        loop {
            let rest = self.text.get(self.at..).unwrap_or_default();
            let Some(i) = rest
                .iter()
                .position(|&b| b == quote || (backslash && b == b'\\'))
            else {
                break;
            };
            if rest.get(i) != Some(&quote) {
                self.at += i + 2; // a backslash and the byte it escapes
                continue;
            }
            self.at += i + 1;
            if self.peek_at(0) == Some(quote) {
                self.at += 1; // doubled quote: a literal quote
                continue;
            }
            return &self.text[start..self.at - 1];
        }
        self.at = self.text.len();
        &self.text[start.min(self.at)..]
    }

    /// `$tag$ ... $tag$` starting at `self.at`, if it is one.
    fn dollar_quoted(&mut self) -> bool {
        let rest = &self.text[self.at..];
        let Some(end) = rest[1..].iter().position(|&b| b == b'$') else {
            self.reached = self.text.len();
            return false;
        };
        // A tag refused leaves `at` here, short of the `$` looked for.
        self.reached = self.reached.max(self.at + end + 2);
        let tag = &rest[..end + 2];
        if !tag[1..tag.len() - 1]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
            || tag.get(1).is_some_and(u8::is_ascii_digit)
        {
            return false;
        }
        let body = &rest[tag.len()..];
        self.at += tag.len()
            + body
                .windows(tag.len())
                .position(|w| w == tag)
                .map_or(body.len(), |p| p + tag.len());
        true
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.token();
        // Reading a token looks at most two bytes past where it leaves
        // `at` (`skip_blank`'s `--` test), but for a refused `$tag$`,
        // which notes its own reach.
        self.reached = self.reached.max(self.at.saturating_add(3));
        token
    }
}

impl<'a> Tokens<'a> {
    fn token(&mut self) -> Option<Token<'a>> {
        if !self.skip_blank() {
            return None;
        }
        let b = self.peek_at(0)?;
        let mysql = self.dialect == Dialect::Mysql;
        Some(match b {
            b'\'' => {
                self.quoted(b'\'', mysql);
                Token::Literal
            }
            b'"' if mysql => {
                self.quoted(b'"', true);
                Token::Literal
            }
            b'"' => Token::Quoted(self.quoted(b'"', false)),
            b'`' if mysql => Token::Quoted(self.quoted(b'`', false)),
            b'E' | b'e'
                if !mysql && self.peek_at(1) == Some(b'\'') && self.word_boundary_before() =>
            {
                self.at += 1;
                self.quoted(b'\'', true);
                Token::Literal
            }
            b'$' if !mysql && self.dollar_quoted() => Token::Literal,
            b if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                let start = self.at;
                self.skip_while(|c| is(WORD_BYTE, c));
                Token::Word(&self.text[start..self.at])
            }
            b if b.is_ascii_digit() => {
                self.skip_while(|c| is(NUMBER_BYTE, c));
                Token::Literal
            }
            _ => {
                self.at += 1;
                Token::Punct(b)
            }
        })
    }
}

impl Tokens<'_> {
    fn word_boundary_before(&self) -> bool {
        self.at == 0
            || self
                .text
                .get(self.at - 1)
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;

    fn pg(text: &str) -> (&'static str, Option<String>) {
        let s = summarize(text.as_bytes(), Dialect::Postgres);
        (s.operation, s.collection)
    }

    fn my(text: &str) -> (&'static str, Option<String>) {
        let s = summarize(text.as_bytes(), Dialect::Mysql);
        (s.operation, s.collection)
    }

    fn some(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    #[test]
    fn verbs_and_single_tables() {
        assert_eq!(
            pg("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            ("SELECT", some("pgbench_accounts"))
        );
        assert_eq!(pg("select * from public.t"), ("SELECT", some("public.t")));
        assert_eq!(pg("SELECT 1"), ("SELECT", None));
        assert_eq!(
            pg("UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 3"),
            ("UPDATE", some("pgbench_tellers"))
        );
        assert_eq!(
            pg("INSERT INTO pgbench_history (tid, bid) VALUES (1, 2)"),
            ("INSERT", some("pgbench_history"))
        );
        assert_eq!(pg("DELETE FROM t WHERE id = 1"), ("DELETE", some("t")));
        assert_eq!(
            pg("COPY pgbench_accounts FROM STDIN"),
            ("COPY", some("pgbench_accounts"))
        );
        assert_eq!(pg("COPY (SELECT 1) TO STDOUT"), ("COPY", None));
        assert_eq!(pg("BEGIN"), ("BEGIN", None));
        assert_eq!(pg("end;"), ("END", None));
        assert_eq!(pg("  /* hi */ -- x\n vacuum t"), ("VACUUM", None));
        assert_eq!(
            my("INSERT IGNORE INTO `db`.`t1` VALUES (1)"),
            ("INSERT", some("db.t1"))
        );
        assert_eq!(my("SELECT intcol1 FROM t1 LIMIT 1"), ("SELECT", some("t1")));
        assert_eq!(
            my("# c\nSELECT 'a' FROM t AS x WHERE 1"),
            ("SELECT", some("t"))
        );
        assert_eq!(pg("SELECT a FROM t x ORDER BY a, b"), ("SELECT", some("t")));
        assert_eq!(my("SELECT intcol1 FROM t1\0"), ("SELECT", some("t1")));
    }

    #[test]
    fn joins_subqueries_and_lists_name_no_table() {
        assert_eq!(pg("SELECT * FROM a JOIN b ON a.id = b.id").1, None);
        assert_eq!(pg("SELECT * FROM a, b").1, None);
        assert_eq!(pg("SELECT * FROM (SELECT 1) s").1, None);
        assert_eq!(
            pg("SELECT (SELECT x FROM inner_t) FROM outer_t").1,
            some("outer_t")
        );
        assert_eq!(my("UPDATE a, b SET a.x = b.x").1, None);
        assert_eq!(my("DELETE a FROM a JOIN b").1, None);
    }

    #[test]
    fn with_reports_the_main_verb() {
        assert_eq!(pg("WITH x AS (SELECT 1) UPDATE t SET a = 1").0, "UPDATE");
        assert_eq!(
            pg("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x").0,
            "SELECT"
        );
    }

    #[test]
    fn unknown_first_words_and_literals_never_leak() {
        assert_eq!(pg("hunter2 secret"), (OTHER, None));
        assert_eq!(pg("'SELECT' FROM t"), (OTHER, None));
        assert_eq!(pg(""), (OTHER, None));
        assert_eq!(pg("SELECT 'x' FROM \"we ird\""), ("SELECT", None));
        assert_eq!(my("SELECT * FROM 'notatable'").1, None);
    }

    #[test]
    fn quotes_and_comments_hide_semicolons_and_keywords() {
        let text =
            b"SELECT ';' FROM t; INSERT INTO u VALUES ($$;$$); /* ; */ ; UPDATE v SET a = E'\\';'";
        let parts: Vec<_> = statements(text, Dialect::Postgres)
            .map(|s| summarize(s, Dialect::Postgres))
            .map(|s| (s.operation, s.collection))
            .collect();
        assert_eq!(
            parts,
            [
                ("SELECT", some("t")),
                ("INSERT", some("u")),
                ("UPDATE", some("v"))
            ]
        );
        let text = b"SELECT \"a;b\" FROM t; # ;\nDELETE FROM w";
        assert_eq!(statements(text, Dialect::Mysql).count(), 2);
        assert_eq!(statements(b" ; ;", Dialect::Postgres).count(), 0);
        assert_eq!(statements(b"SELECT 1", Dialect::Postgres).count(), 1);
    }

    #[test]
    fn verb_lookup_matches_a_scan_of_the_list() {
        assert!(
            VERBS.windows(2).all(|w| w[0] < w[1]),
            "VERBS must stay sorted"
        );
        assert!(VERBS.iter().all(|v| v.len() <= 16));
        let scan = |word: &[u8]| {
            VERBS
                .iter()
                .copied()
                .find(|v| v.as_bytes().eq_ignore_ascii_case(word))
        };
        for v in VERBS {
            let lower = v.to_ascii_lowercase();
            let mixed: String = v
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect();
            for word in [v.to_string(), lower, mixed] {
                assert_eq!(verb(word.as_bytes()), Some(*v), "{word}");
            }
            // A prefix or an extension of a verb is not one (unless listed).
            assert_eq!(verb(&v.as_bytes()[1..]), scan(&v.as_bytes()[1..]));
            assert_eq!(
                verb(format!("{v}X").as_bytes()),
                scan(format!("{v}X").as_bytes())
            );
        }
        for word in [
            &b""[..],
            b"SELECTS",
            b"SELECTIONISTICALLYX",
            b"s\xc3\xa9lect",
            b"SEL$CT",
            b"_",
        ] {
            assert_eq!(verb(word), scan(word));
        }
    }

    #[test]
    fn byte_classes_match_their_definitions() {
        for b in 0..=255u8 {
            let alnum = b.is_ascii_alphanumeric();
            assert_eq!(
                is(WORD_BYTE, b),
                alnum || b == b'_' || b == b'$' || b >= 0x80
            );
            assert_eq!(is(NUMBER_BYTE, b), alnum || b == b'.' || b == b'_');
            assert_eq!(
                is(BLANK_START, b),
                b.is_ascii_whitespace() || matches!(b, 0 | b'-' | b'#' | b'/')
            );
        }
    }

    /// The byte-at-a-time quoted-run scan `Tokens::quoted` replaced: the
    /// end position and the content.
    fn quoted_reference(text: &[u8], at: usize, quote: u8, backslash: bool) -> (usize, &[u8]) {
        let mut at = at + 1;
        let start = at;
        while let Some(&b) = text.get(at) {
            if backslash && b == b'\\' {
                at += 2;
                continue;
            }
            at += 1;
            if b == quote {
                if text.get(at) == Some(&quote) {
                    at += 1;
                    continue;
                }
                return (at, &text[start..at - 1]);
            }
        }
        (text.len(), &text[start.min(text.len())..])
    }

    #[test]
    fn quoted_runs_end_where_a_byte_by_byte_scan_ends_them() {
        let mut rng = XorShift(11);
        let alphabet = b"'\"`\\ax";
        for _ in 0..20_000 {
            let len = 1 + rng.below_usize(16);
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below_usize(alphabet.len())])
                .collect();
            for (quote, backslash) in [(b'\'', true), (b'\'', false), (b'"', true), (b'`', false)] {
                let mut tokens = Tokens::new(&text, Dialect::Mysql);
                let content = tokens.quoted(quote, backslash);
                let expected = quoted_reference(&text, 0, quote, backslash);
                assert_eq!((tokens.at.min(text.len()), content), expected, "{text:?}");
            }
        }
    }

    #[test]
    fn text_without_semicolons_is_one_statement_or_none() {
        let mut rng = XorShift(5);
        let alphabet = b"SELECT FROM t'\"`$-#/*\\\n ()E.,x1";
        for _ in 0..20_000 {
            let len = rng.below_usize(32);
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below_usize(alphabet.len())])
                .collect();
            for dialect in [Dialect::Postgres, Dialect::Mysql] {
                let found: Vec<&[u8]> = statements(&text, dialect).collect();
                let some_token = Tokens::new(&text, dialect).next().is_some();
                let expected: Vec<&[u8]> = if some_token { vec![&text[..]] } else { vec![] };
                assert_eq!(found, expected, "{text:?}");
            }
        }
    }

    /// What `summarize_reading` promises: the bytes it says it read decide
    /// the summary, whatever follows them. Random statements from SQL-ish
    /// pieces, each summarized again with its unread rest replaced.
    #[test]
    fn the_bytes_read_decide_the_summary() {
        let mut rng = XorShift(13);
        let pieces: &[&[u8]] = &[
            b"SELECT ",
            b"INSERT ",
            b"INTO ",
            b"UPDATE ",
            b"DELETE ",
            b"FROM ",
            b"WITH ",
            b"COPY ",
            b"SET ",
            b"WHERE ",
            b"AS ",
            b"ONLY ",
            b"t ",
            b"s.t",
            b"`q`",
            b"\"x\" ",
            b"'l'",
            b"E'\\''",
            b"$1",
            b"$a$ ; $a$",
            b"--",
            b"-- c\n",
            b"# c\n",
            b"/*",
            b"*/",
            b"(",
            b")",
            b",",
            b";",
            b".",
            b" ",
            b"\n",
            b"1",
            b"x",
            b"\0",
        ];
        for _ in 0..20_000 {
            let mut text = Vec::new();
            for _ in 0..rng.below_usize(10) {
                text.extend_from_slice(pieces[rng.below_usize(pieces.len())]);
            }
            for dialect in [Dialect::Postgres, Dialect::Mysql] {
                let (summary, read) = summarize_reading(&text, dialect);
                assert_eq!(summary, summarize(&text, dialect));
                if read == text.len() {
                    continue;
                }
                for _ in 0..4 {
                    let mut other = text[..read].to_vec();
                    for _ in 0..rng.below_usize(6) {
                        other.extend_from_slice(pieces[rng.below_usize(pieces.len())]);
                    }
                    assert_eq!(
                        summarize(&other, dialect),
                        summary,
                        "{:?} read {read}, then {:?}",
                        String::from_utf8_lossy(&text),
                        String::from_utf8_lossy(&other)
                    );
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(7);
        let alphabet = b"SELECT FROM t;'\"`$-#/*\\\n ()E.,x1";
        for _ in 0..20_000 {
            let len = rng.below_usize(64);
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below_usize(alphabet.len())])
                .collect();
            for dialect in [Dialect::Postgres, Dialect::Mysql] {
                let summary = summarize(&text, dialect);
                assert!(summary.operation == OTHER || VERBS.contains(&summary.operation));
                for s in statements(&text, dialect) {
                    summarize(s, dialect);
                }
            }
        }
    }
}
