#!/usr/bin/perl
# Prepared statements over MariaDB's binary protocol (COM_STMT_PREPARE,
# COM_STMT_EXECUTE, COM_STMT_CLOSE), for tests/tests/mysql.rs and privacy.rs.
#
# Usage: mysql_prepared.pl PORT ROUNDS [VALUE]
# Connects to 127.0.0.1:PORT as root over TCP with server-side prepared
# statements, creates a table, prepares an INSERT, a SELECT, an UPDATE and a
# DELETE once, executes each ROUNDS times (inserting "VALUE N", `value` by
# default, as the parameter of round N), then executes the INSERT once more
# with a duplicate key (error 1062). Prints its own tally on stdout, one
# `name count` per line: prepares, executions per verb, and failures by error
# number.
use strict;
use warnings;
use DBI;

my ($port, $rounds, $value) = @ARGV;
die "usage: $0 PORT ROUNDS [VALUE]\n" unless defined $rounds;
$value //= "value";
my $dbh = DBI->connect(
    "DBI:MariaDB:host=127.0.0.1;port=$port;mariadb_server_prepare=1",
    "root", "", { RaiseError => 1, PrintError => 0, AutoCommit => 1 });
$dbh->do("CREATE DATABASE IF NOT EXISTS prepared");
$dbh->do("DROP TABLE IF EXISTS prepared.kv");
$dbh->do("CREATE TABLE prepared.kv (k INT PRIMARY KEY, v VARCHAR(64))");

my %tally;
my %statements = (
    INSERT => "INSERT INTO prepared.kv (k, v) VALUES (?, ?)",
    SELECT => "SELECT v FROM prepared.kv WHERE k = ?",
    UPDATE => "UPDATE prepared.kv SET v = ? WHERE k = ?",
    DELETE => "DELETE FROM prepared.kv WHERE k = ?",
);
my %sth;
for my $verb (sort keys %statements) {
    $sth{$verb} = $dbh->prepare($statements{$verb});
    $tally{PREPARE}++;
}
for my $i (1 .. $rounds) {
    $sth{INSERT}->execute($i, "$value $i");
    $tally{INSERT}++;
    $sth{SELECT}->execute($i);
    my $rows = $sth{SELECT}->fetchall_arrayref;
    die "row $i not found\n" unless @$rows == 1;
    $tally{SELECT}++;
    $sth{UPDATE}->execute("updated $i", $i);
    $tally{UPDATE}++;
}
for my $i (1 .. $rounds) {
    next if $i % 2;
    $sth{DELETE}->execute($i);
    $tally{DELETE}++;
}
eval { $sth{INSERT}->execute(1, "duplicate"); };
$tally{INSERT}++;
if ($DBI::err) {
    $tally{"error $DBI::err"}++;
}
$_->finish for values %sth;
undef %sth;
$dbh->disconnect;
print "$_ $tally{$_}\n" for sort keys %tally;
