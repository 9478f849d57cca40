//! A memo of the statements one connection summarized lately, each by the
//! leading bytes that decided its summary, so that a statement starting the
//! same way is not tokenized again.
//!
//! A summary is decided near a statement's start (`INSERT INTO t1 VALUES`,
//! `SELECT a,b FROM t1 WHERE`), and clients send the same statements over
//! and over with other literals after that point. [`sql::summarize_reading`]
//! says how many bytes decided a summary; any statement starting with those
//! bytes has the same one, so a hit answers exactly what summarizing would.

use super::sql::{self, Dialect, Summary};

/// Statements remembered: an application's hot statements take turns.
const SLOTS: usize = 4;

/// Longest deciding prefix remembered: a verb, a few column names and a
/// table fit with room to spare. A statement decided further on is
/// summarized every time.
const MAX_PREFIX: usize = 256;

/// The memo; a fixed size, boxed by its owner until first needed.
#[derive(Debug, Default)]
pub struct Memo {
    slots: [Option<Slot>; SLOTS],
    /// The slot the next new statement replaces: the oldest filled.
    next: usize,
}

struct Slot {
    dialect: Dialect,
    /// The bytes that decided the summary.
    prefix: Vec<u8>,
    /// The prefix is the whole statement, whose end decided too: only the
    /// same statement matches.
    whole: bool,
    summary: Summary,
}

/// The prefix's length only: it is statement text.
impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("dialect", &self.dialect)
            .field("prefix", &self.prefix.len())
            .field("whole", &self.whole)
            .field("summary", &self.summary)
            .finish()
    }
}

impl Slot {
    fn decides(&self, statement: &[u8], dialect: Dialect) -> bool {
        self.dialect == dialect
            && statement.starts_with(&self.prefix)
            && (!self.whole || statement.len() == self.prefix.len())
    }
}

impl Memo {
    /// [`sql::summarize`], answered from the memo when a statement lately
    /// summarized was decided by bytes `statement` starts with.
    pub fn summarize(&mut self, statement: &[u8], dialect: Dialect) -> Summary {
        let hit = self
            .slots
            .iter()
            .flatten()
            .find(|s| s.decides(statement, dialect));
        if let Some(slot) = hit {
            return slot.summary.clone();
        }
        let (summary, read) = sql::summarize_reading(statement, dialect);
        if let Some(prefix) = statement.get(..read).filter(|p| p.len() <= MAX_PREFIX) {
            let slot = Slot {
                dialect,
                prefix: prefix.to_vec(),
                whole: read == statement.len(),
                summary: summary.clone(),
            };
            if let Some(free) = self.slots.get_mut(self.next) {
                *free = Some(slot);
            }
            self.next = (self.next + 1) % SLOTS;
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(operation: &'static str, collection: Option<&str>) -> Summary {
        Summary {
            operation,
            collection: collection.map(str::to_owned),
        }
    }

    #[test]
    fn statements_with_other_literals_hit() {
        let mut memo = Memo::default();
        let first = b"INSERT INTO t1 VALUES (NULL,1804289383,'mxvtvmC9127q')";
        assert_eq!(
            memo.summarize(first, Dialect::Mysql),
            summary("INSERT", Some("t1"))
        );
        assert_eq!(memo.slots.iter().flatten().count(), 1);
        let second = b"INSERT INTO t1 VALUES (NULL,100669,'qnMdipW5KkXdTjGCh2PNzLoe')";
        assert_eq!(
            memo.summarize(second, Dialect::Mysql),
            summary("INSERT", Some("t1"))
        );
        // Answered from the memo: nothing new was kept.
        assert_eq!(memo.slots.iter().flatten().count(), 1);
    }

    #[test]
    fn a_statement_differing_within_the_prefix_misses() {
        let mut memo = Memo::default();
        memo.summarize(b"SELECT a FROM t1 WHERE id = 1", Dialect::Mysql);
        let joined = b"SELECT a FROM t1 JOIN t2 ON true WHERE id = 1";
        assert_eq!(
            memo.summarize(joined, Dialect::Mysql),
            sql::summarize(joined, Dialect::Mysql)
        );
        assert_eq!(memo.slots.iter().flatten().count(), 2);
        // Decided by its end: a longer statement does not match.
        memo.summarize(b"SELECT a FROM t1", Dialect::Mysql);
        let longer = b"SELECT a FROM t1, t2";
        assert_eq!(
            memo.summarize(longer, Dialect::Mysql),
            summary("SELECT", None)
        );
        // Nor does another dialect's.
        let quoted = b"SELECT a FROM \"t1\" WHERE id = 1";
        assert_eq!(
            memo.summarize(quoted, Dialect::Mysql),
            summary("SELECT", None)
        );
        assert_eq!(
            memo.summarize(quoted, Dialect::Postgres),
            summary("SELECT", Some("t1"))
        );
    }

    #[test]
    fn capacity_is_fixed() {
        let mut memo = Memo::default();
        for i in 0..SLOTS * 3 {
            let statement = format!("SELECT a FROM t{i} WHERE b = 1");
            let expected = summary("SELECT", Some(&format!("t{i}")));
            assert_eq!(
                memo.summarize(statement.as_bytes(), Dialect::Mysql),
                expected
            );
        }
        assert_eq!(memo.slots.len(), SLOTS);
        let long = format!("SELECT {} FROM t WHERE b = 1", "a,".repeat(200) + "a");
        memo.summarize(long.as_bytes(), Dialect::Mysql);
        assert!(memo
            .slots
            .iter()
            .flatten()
            .all(|s| s.prefix.len() <= MAX_PREFIX));
    }

    /// Statements of every shape, each followed by random bytes or cut
    /// short: the memo, warm or cold, agrees with summarizing.
    #[test]
    fn agrees_with_summarizing() {
        let mut rng = crate::testutil::XorShift(0x5DEE_CE66_D1CE_4E5B);
        let heads: &[&[u8]] = &[
            b"SELECT a, b FROM t1 WHERE id = ",
            b"select * from s.t as x where ",
            b"INSERT INTO t1 VALUES (",
            b"INSERT LOW_PRIORITY INTO `db`.`t` (a) VALUES (",
            b"UPDATE t SET a = ",
            b"DELETE FROM t WHERE a = ",
            b"WITH x AS (SELECT 1) SELECT * FROM x WHERE ",
            b"SELECT a FROM t1 /* c */ -- x\n WHERE ",
            b"SELECT $1, $tag$ x $tag$ FROM t WHERE ",
            b"COPY t FROM STDIN ",
            b"BEGIN",
            b"SELECT 'it''s' FROM t",
            b"SELECT a FROM t1; SELECT ",
        ];
        let tails: &[u8] = b" ,;'\"`$()-#/*\\\nabcXYZ019.";
        for dialect in [Dialect::Mysql, Dialect::Postgres] {
            let mut memo = Memo::default();
            for _ in 0..20_000 {
                let head = heads[rng.below_usize(heads.len())];
                let mut statement = head.to_vec();
                if rng.below(4) == 0 {
                    statement.truncate(rng.below_usize(head.len() + 1));
                }
                for _ in 0..rng.below_usize(12) {
                    statement.push(tails[rng.below_usize(tails.len())]);
                }
                assert_eq!(
                    memo.summarize(&statement, dialect),
                    sql::summarize(&statement, dialect),
                    "{:?}",
                    String::from_utf8_lossy(&statement)
                );
            }
        }
    }
}
