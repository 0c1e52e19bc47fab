//! One small, synchronous SQL surface over the two relational databases the read side uses:
//! SQLite (one file per server, the default) and PostgreSQL (shared by several servers). The
//! read models and the server's token, secret and idempotency tables are written once against
//! [`Sql`] and run on either.
//!
//! Statements are written in the common dialect: `?1`-style numbered parameters (turned into
//! `$1` for PostgreSQL), `INSERT … ON CONFLICT …` (both have it), `CAST(? AS TEXT)` where
//! PostgreSQL cannot infer a parameter's type. Schemas are written for SQLite and translated
//! by [`postgres_ddl`] (64-bit integers, byte-order text comparison like SQLite's).
//!
//! The PostgreSQL side is `tokio-postgres` driven by one background thread of its own, with
//! each call waited for on the caller's thread: like SQLite calls, they block that thread.
//! Every statement there is a network round trip, so a transaction's `BEGIN` and its
//! [`Sql::execute_later`] statements wait and go out together with the next statement that
//! needs an answer, in one pipeline (one round trip, in order; see [`PgConnection`]).
//!
//! Also here, because every database file and connection goes through them: [`files`]
//! creates database files private to their owner, and [`tls`] makes the TLS connector
//! every PostgreSQL connection uses (the event store's too).

pub mod durable;
pub mod files;
pub mod tls;

pub use durable::{Durable, Place};

use std::cell::RefCell;
use std::collections::HashMap;

/// A column value, as SQLite has them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("column {index}: {reason}")]
    Column { index: usize, reason: String },
    #[error("the PostgreSQL driver thread failed: {0}")]
    Driver(String),
    #[error("the query returned no row")]
    NoRows,
    /// A statement of this PostgreSQL transaction failed earlier (or never went out), so
    /// nothing more may run in it and it cannot commit: it can only be rolled back.
    #[error("an earlier statement of this transaction failed; it can only be rolled back")]
    TransactionFailed,
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// Opens (creating it 0600 if missing, see [`crate::files`]) the SQLite database at `path`.
pub fn open_sqlite(path: &std::path::Path) -> Result<rusqlite::Connection, SqlError> {
    crate::files::create_private_file(path).map_err(|source| SqlError::Create {
        path: path.display().to_string(),
        source,
    })?;
    Ok(rusqlite::Connection::open(path)?)
}

impl SqlError {
    /// A column whose value this code did not write (a corrupt or foreign row).
    pub fn column(index: usize, reason: impl std::fmt::Display) -> Self {
        SqlError::Column {
            index,
            reason: reason.to_string(),
        }
    }

    /// Whether a unique or primary-key constraint refused the statement.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }
            SqlError::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

/// Whether `error`, or any error it was caused by, says the storage is full: SQLite's
/// `SQLITE_FULL`, PostgreSQL's `53100 disk_full` or an I/O error `ENOSPC`. Callers answer
/// those as "nothing was written; free space", not as an internal failure.
pub fn is_storage_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        let full = if let Some(e) = error.downcast_ref::<SqlError>() {
            // Transparent: its `source()` skips the driver's error, so look at it here.
            match e {
                SqlError::Sqlite(e) => is_storage_full(e),
                SqlError::Postgres(e) => is_storage_full(e),
                SqlError::Create { source, .. } => is_storage_full(source),
                _ => false,
            }
        } else if let Some(e) = error.downcast_ref::<rusqlite::Error>() {
            e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
        } else if let Some(e) = error.downcast_ref::<tokio_postgres::Error>() {
            e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL)
        } else if let Some(e) = error.downcast_ref::<std::io::Error>() {
            e.kind() == std::io::ErrorKind::StorageFull
        } else {
            false
        };
        if full {
            return true;
        }
        next = error.source();
    }
    false
}

/// The server's own message, not just "db error".
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
        None => format!("PostgreSQL: {e}"),
    }
}

/// Which database a statement runs on, for the rare statement that must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value that can be bound to a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u16, u8, usize, u64);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Parameters for a statement: `params![a, b.to_string(), c]`.
#[macro_export]
macro_rules! sql_params {
    ($($value:expr),* $(,)?) => {
        &[$(&$value as &dyn $crate::ToValue),*] as &[&dyn $crate::ToValue]
    };
}
pub use crate::sql_params as params;

/// A column value read back into a Rust type.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, String>;
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|e| format!("{i}: {e}")),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u32, u16, u8, usize, u64);

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        i64::from_value(value).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A column number (only `usize`, so `row.get(0)` needs no annotation).
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `index` (from 0) as a `T`. (`row.get::<_, String>(0)` reads as in rusqlite.)
    pub fn get<I: RowIndex, T: FromValue>(&self, index: I) -> Result<T, SqlError> {
        let index = index.index();
        let value = self
            .0
            .get(index)
            .ok_or_else(|| SqlError::column(index, "no such column"))?;
        T::from_value(value).map_err(|reason| SqlError::column(index, reason))
    }

    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// A connection or transaction statements run on. Object safe: code takes `&dyn Sql`.
pub trait Sql {
    fn dialect(&self) -> Dialect;
    /// Runs one statement; returns the number of rows it changed.
    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, SqlError>;
    /// Runs one query; returns all its rows.
    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, SqlError>;
    /// Runs statements without parameters (schemas, PRAGMAs), as written.
    fn batch(&self, sql: &str) -> Result<(), SqlError>;
    /// Runs one statement whose answer the caller does not need. Inside a PostgreSQL
    /// transaction it is only queued, and sent with the next statement that needs an answer
    /// (a query, an `execute`, the commit) in one round trip: a failure then shows at that
    /// statement, and the transaction does not commit. Elsewhere it runs at once.
    fn execute_later(&self, sql: &str, params: &[&dyn ToValue]) -> Result<(), SqlError> {
        self.execute(sql, params).map(|_| ())
    }
}

/// Conveniences over [`Sql`].
pub trait SqlExt: Sql {
    /// The rows of a query, each turned into a `T` by `f`.
    fn map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row of a query turned into a `T`, if there is one.
    fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<Option<T>, SqlError> {
        self.query(sql, params)?.first().map(f).transpose()
    }

    /// The names of the tables in the current schema, sorted.
    fn tables(&self) -> Result<Vec<String>, SqlError> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                 ORDER BY name"
            }
            Dialect::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                 ORDER BY 1"
            }
        };
        self.map(sql, &[], |row| row.get(0))
    }
}

impl<S: Sql + ?Sized> SqlExt for S {}

/// `Result` with [`SqlError`].
pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// What a statement's parameters can be given as: `params![…]`, an array of one type, or a
/// list of [`Value`]s built at run time.
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

/// A statement bound to the connection it runs on, read like rusqlite's cached statements.
pub struct Statement<'a> {
    db: &'a dyn Sql,
    sql: &'a str,
}

impl<'a> dyn Sql + 'a {
    /// The statement `sql` (both backends cache what they prepare).
    pub fn prepare_cached<'s>(&'s self, sql: &'s str) -> Result<Statement<'s>> {
        Ok(Statement { db: self, sql })
    }

    /// The same as [`prepare_cached`](Self::prepare_cached): every statement is cached.
    pub fn prepare<'s>(&'s self, sql: &'s str) -> Result<Statement<'s>> {
        self.prepare_cached(sql)
    }

    /// The first row of `sql` turned into a `T`; [`SqlError::NoRows`] if there is none.
    pub fn query_row<P: Params, T>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

impl Statement<'_> {
    fn run_query<P: Params>(&self, params: P) -> Result<Vec<Row>> {
        with_refs(params, |refs| self.db.query(self.sql, refs))
    }

    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        with_refs(params, |refs| self.db.execute(self.sql, refs))
    }

    /// Every row, each turned into a `T` by `f`.
    pub fn query_map<P: Params, T>(
        &mut self,
        params: P,
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        Ok(self
            .run_query(params)?
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .into_iter())
    }

    /// Whether the query returns a row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        Ok(!self.run_query(params)?.is_empty())
    }

    /// The first row turned into a `T`; [`SqlError::NoRows`] if there is none.
    pub fn query_row<P: Params, T>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        match self.run_query(params)?.first() {
            Some(row) => f(row),
            None => Err(SqlError::NoRows),
        }
    }
}

/// Calls `f` with `params` as the slice [`Sql`] takes.
fn with_refs<P: Params, T>(params: P, f: impl FnOnce(&[&dyn ToValue]) -> T) -> T {
    let values = params.into_values();
    let refs: Vec<&dyn ToValue> = values.iter().map(|v| v as &dyn ToValue).collect();
    f(&refs)
}

/// `.optional()` on a single-row answer: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// SQLite

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl From<rusqlite::types::Value> for Value {
    fn from(value: rusqlite::types::Value) -> Self {
        use rusqlite::types::Value as V;
        match value {
            V::Null => Value::Null,
            V::Integer(i) => Value::Int(i),
            V::Real(f) => Value::Real(f),
            V::Text(s) => Value::Text(s),
            V::Blob(b) => Value::Blob(b),
        }
    }
}

/// Statements go through rusqlite's statement cache (size it with
/// `set_prepared_statement_cache_capacity`). A `Transaction` derefs to its `Connection`.
impl Sql for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, SqlError> {
        let values = params.into_values();
        Ok(self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(values.iter()))?)
    }

    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, SqlError> {
        let values = params.into_values();
        let mut statement = self.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(Value::from(row.get::<_, rusqlite::types::Value>(i)?));
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> Result<(), SqlError> {
        Ok(self.execute_batch(sql)?)
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

use tokio_postgres::types::{IsNull, ToSql as PgToSql, Type};

impl PgToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.as_str().to_sql(ty, out)
            }
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!("cannot bind {value:?} to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<Row, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
            ref other => {
                return Err(SqlError::column(
                    i,
                    format!("unsupported PostgreSQL type {other}; cast it in the query"),
                ))
            }
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// `?1` → `$1` (and a bare `?` → the next number), outside string literals.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '?' if !in_literal => {
                out.push('$');
                if chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    while let Some(d) = chars.next_if(|d| d.is_ascii_digit()) {
                        out.push(d);
                    }
                } else {
                    out.push_str(&next.to_string());
                    next += 1;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A schema written for SQLite, for PostgreSQL: 64-bit `INTEGER`s, `BLOB` → `BYTEA`, no
/// `WITHOUT ROWID`, and text compared byte by byte (`COLLATE "C"`) as SQLite does, so orders
/// and ranges over ids and RFC 3339 times come out the same on both.
pub fn postgres_ddl(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.as_str() {
            "INTEGER" => out.push_str("BIGINT"),
            "BLOB" => out.push_str("BYTEA"),
            "REAL" => out.push_str("DOUBLE PRECISION"),
            "TEXT" => out.push_str("TEXT COLLATE \"C\""),
            _ => out.push_str(word),
        }
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.replace("WITHOUT ROWID", "")
}

/// The advisory lock key under which schemas are created.
const SCHEMA_LOCK: i64 = 0x6c6b_7363_6865; // "lksche"

/// A PostgreSQL connection with its prepared statements, working in one schema. Used
/// directly, each statement commits on its own; [`PgConnection::transaction`] groups them.
///
/// Inside a transaction, `BEGIN` and the statements given to [`Sql::execute_later`] are
/// queued; the next statement that needs an answer sends the queue and itself in one
/// pipeline: one round trip, the statements run in order, and the first failure is the
/// answer (PostgreSQL then refuses the rest of the transaction, so nothing after a failed
/// statement takes effect and the commit does not happen).
pub struct PgConnection {
    inner: RefCell<PgInner>,
}

struct PgInner {
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// Statements waiting to go out with the next one that needs an answer.
    queued: Vec<Step>,
    transaction: Transaction,
}

/// Where the connection's transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transaction {
    None,
    /// `BEGIN` is queued, not sent yet.
    Queued,
    /// `BEGIN` went out.
    Sent,
    /// A statement failed (on the server, or before it could be sent): everything after it
    /// is refused and the commit fails, even if a caller ignored that first error.
    Failed,
}

/// One statement of a pipeline.
enum Step {
    /// Without parameters, by the simple-query protocol (`BEGIN`, `COMMIT`, schemas).
    Simple(String),
    Execute(String, Vec<Value>),
    Query(String, Vec<Value>),
}

/// What a [`Step`] answered.
enum Answer {
    Done,
    Changed(u64),
    Rows(Vec<tokio_postgres::Row>),
}

type StepFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Answer, tokio_postgres::Error>> + Send + 'a>,
>;

/// The runtime that drives every [`PgConnection`]'s socket. Calls wait for their answers
/// with a plain blocking wait, so a connection can be used from any thread, an async task's
/// included (like a SQLite connection, it then blocks that thread for the call).
fn driver() -> &'static tokio::runtime::Runtime {
    static DRIVER: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    DRIVER.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("latchkey-sql-postgres")
            .enable_all()
            .build()
            .expect("cannot start the PostgreSQL driver thread")
    })
}

/// Waits for `future` on this thread, whatever runtime it belongs to.
fn wait<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

/// Waits for every future, polling them in order, so the requests they send on their first
/// poll leave in that order (tokio-postgres pipelines requests sent before earlier answers
/// came back). Returns their outputs in the same order.
fn in_order<T>(
    mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    wait(std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }));
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

impl PgConnection {
    /// Connects to `url` and works in `schema` (created if missing) from then on.
    pub fn connect(url: &str, schema: &str) -> Result<Self, SqlError> {
        // The URL may hold a password: errors never echo it.
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_application_name().is_none() {
            config.application_name("latchkey");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let tls = crate::tls::connector().map_err(SqlError::Driver)?;
        let connected = wait(driver().spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            // A failed connection shows as errors on the next call and as `is_closed`.
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        }));
        let client = connected.map_err(|e| SqlError::Driver(e.to_string()))??;
        // Quietly (no NOTICE for a schema that exists) and one server at a time (two
        // servers starting together would both try to create it).
        wait(client.batch_execute(&format!(
            "SET client_min_messages TO warning;
             BEGIN;
             SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
             CREATE SCHEMA IF NOT EXISTS {schema};
             COMMIT;
             SET search_path TO {schema}"
        )))?;
        Ok(Self {
            inner: RefCell::new(PgInner {
                client,
                statements: HashMap::new(),
                queued: Vec::new(),
                transaction: Transaction::None,
            }),
        })
    }

    /// Starts a transaction; statements run on the returned [`PgTransaction`]. Its `BEGIN`
    /// goes out with its first statement.
    pub fn transaction(&self) -> Result<PgTransaction<'_>, SqlError> {
        self.begin("BEGIN")
    }

    /// Starts a read-only transaction that sees one snapshot throughout.
    pub fn read_transaction(&self) -> Result<PgTransaction<'_>, SqlError> {
        self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }

    fn begin(&self, begin: &str) -> Result<PgTransaction<'_>, SqlError> {
        let mut inner = self.inner.borrow_mut();
        if inner.transaction != Transaction::None {
            return Err(SqlError::Driver(
                "a transaction is already open on this connection".into(),
            ));
        }
        inner.queued.push(Step::Simple(begin.to_owned()));
        inner.transaction = Transaction::Queued;
        Ok(PgTransaction {
            connection: self,
            open: std::cell::Cell::new(true),
        })
    }

    /// Whether the connection is still usable (a pool drops broken ones).
    pub fn is_closed(&self) -> bool {
        self.inner.borrow().client.is_closed()
    }

    /// Sends the queued statements, then `steps`, in one pipeline; returns the answers to
    /// `steps`, or the first failure among all of them. Inside a transaction, a failure marks
    /// it failed: a statement that did not prepare never sent the queue before it (the
    /// transaction's `BEGIN`, perhaps), so nothing after it may run as if in the transaction.
    fn run(&self, steps: Vec<Step>) -> Result<Vec<Answer>, SqlError> {
        if self.inner.borrow().transaction == Transaction::Failed {
            return Err(SqlError::TransactionFailed);
        }
        let result = self.send(steps);
        if result.is_err() {
            let mut inner = self.inner.borrow_mut();
            if inner.transaction != Transaction::None {
                inner.transaction = Transaction::Failed;
                inner.queued.clear();
            }
        }
        result
    }

    fn send(&self, steps: Vec<Step>) -> Result<Vec<Answer>, SqlError> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let mut all = std::mem::take(&mut inner.queued);
        let queued = all.len();
        all.extend(steps);
        if inner.transaction == Transaction::Queued {
            inner.transaction = Transaction::Sent;
        }
        // Statements this connection has not prepared yet: prepared together first.
        let mut unprepared: Vec<&str> = Vec::new();
        for step in &all {
            if let Step::Execute(sql, _) | Step::Query(sql, _) = step {
                if !inner.statements.contains_key(sql) && !unprepared.contains(&sql.as_str()) {
                    unprepared.push(sql);
                }
            }
        }
        if !unprepared.is_empty() {
            let texts: Vec<String> = unprepared
                .iter()
                .map(|s| postgres_placeholders(s))
                .collect();
            let client = &inner.client;
            let prepared = in_order(
                texts
                    .iter()
                    .map(|text| {
                        Box::pin(client.prepare(text))
                            as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
                    })
                    .collect(),
            );
            for (sql, statement) in unprepared.iter().zip(prepared) {
                inner.statements.insert((*sql).to_owned(), statement?);
            }
        }
        let params: Vec<Vec<&(dyn PgToSql + Sync)>> = all
            .iter()
            .map(|step| match step {
                Step::Execute(_, values) | Step::Query(_, values) => as_postgres(values),
                Step::Simple(_) => Vec::new(),
            })
            .collect();
        let client = &inner.client;
        let statements = &inner.statements;
        let futures: Vec<StepFuture<'_>> =
            all.iter()
                .zip(&params)
                .map(|(step, params)| -> StepFuture<'_> {
                    match step {
                        Step::Simple(sql) => Box::pin(async move {
                            client.batch_execute(sql).await.map(|()| Answer::Done)
                        }),
                        Step::Execute(sql, _) => {
                            let statement = &statements[sql];
                            Box::pin(async move {
                                client.execute(statement, params).await.map(Answer::Changed)
                            })
                        }
                        Step::Query(sql, _) => {
                            let statement = &statements[sql];
                            Box::pin(async move {
                                client.query(statement, params).await.map(Answer::Rows)
                            })
                        }
                    }
                })
                .collect();
        let mut answers = Vec::with_capacity(all.len() - queued);
        for (i, answer) in in_order(futures).into_iter().enumerate() {
            let answer = answer?;
            if i >= queued {
                answers.push(answer);
            }
        }
        Ok(answers)
    }

    fn run_one(&self, step: Step) -> Result<Answer, SqlError> {
        Ok(self
            .run(vec![step])?
            .pop()
            .expect("one answer for one statement"))
    }

    /// Ends the transaction with `end`, `COMMIT` (after whatever is still queued) or
    /// `ROLLBACK` (dropping it). Nothing goes out when the server has not seen the
    /// transaction yet and there is nothing to commit. A failed transaction does not commit.
    fn end(&self, end: &str) -> Result<(), SqlError> {
        let rollback = end != "COMMIT";
        let (send, earlier_failure) = {
            let mut inner = self.inner.borrow_mut();
            // Unsent, the queue holds the transaction's BEGIN and its statements only.
            let unsent = inner.transaction == Transaction::Queued;
            let failed = inner.transaction == Transaction::Failed;
            if failed || (unsent && (rollback || inner.queued.len() <= 1)) {
                inner.queued.clear();
                (false, failed)
            } else {
                if rollback {
                    inner.queued.clear();
                }
                (true, false)
            }
        };
        let result = if send {
            self.run_one(Step::Simple(end.to_owned())).map(|_| ())
        } else if earlier_failure && !rollback {
            Err(SqlError::TransactionFailed)
        } else {
            Ok(())
        };
        let failed = result.is_err() || earlier_failure;
        {
            let mut inner = self.inner.borrow_mut();
            inner.queued.clear();
            inner.transaction = Transaction::None;
        }
        if failed {
            // The failure may have come before the server saw the end (a statement that did
            // not prepare): make sure the transaction is over. Outside one, ROLLBACK only
            // warns. A failed rollback leaves a broken connection, which its owner drops.
            let _ = wait(self.inner.borrow().client.batch_execute("ROLLBACK"));
        }
        result
    }
}

/// A transaction on a [`PgConnection`]: rolled back when dropped without
/// [`PgTransaction::commit`].
pub struct PgTransaction<'a> {
    connection: &'a PgConnection,
    open: std::cell::Cell<bool>,
}

impl PgTransaction<'_> {
    /// Commits, sending whatever statements are still queued first (one round trip).
    pub fn commit(self) -> Result<(), SqlError> {
        self.open.set(false);
        self.connection.end("COMMIT")
    }
}

impl Drop for PgTransaction<'_> {
    fn drop(&mut self) {
        if self.open.get() {
            // Queued statements are dropped unsent. A failed rollback leaves a broken
            // connection, which its owner then drops.
            let _ = self.connection.end("ROLLBACK");
        }
    }
}

impl std::ops::Deref for PgTransaction<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.connection
    }
}

fn as_postgres(values: &[Value]) -> Vec<&(dyn PgToSql + Sync)> {
    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

impl Sql for PgConnection {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, SqlError> {
        match self.run_one(Step::Execute(sql.to_owned(), params.into_values()))? {
            Answer::Changed(n) => Ok(n as usize),
            _ => unreachable!("an Execute step answers Changed"),
        }
    }

    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, SqlError> {
        match self.run_one(Step::Query(sql.to_owned(), params.into_values()))? {
            Answer::Rows(rows) => rows.iter().map(postgres_row).collect(),
            _ => unreachable!("a Query step answers Rows"),
        }
    }

    fn batch(&self, sql: &str) -> Result<(), SqlError> {
        self.run_one(Step::Simple(sql.to_owned())).map(|_| ())
    }

    fn execute_later(&self, sql: &str, params: &[&dyn ToValue]) -> Result<(), SqlError> {
        let mut inner = self.inner.borrow_mut();
        if inner.transaction == Transaction::Failed {
            return Err(SqlError::TransactionFailed);
        }
        if inner.transaction == Transaction::None {
            drop(inner);
            return self.execute(sql, params).map(|_| ());
        }
        inner
            .queued
            .push(Step::Execute(sql.to_owned(), params.into_values()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_literals() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?2 AND c = '?' AND d = ?1"),
            "SELECT a FROM t WHERE b = $2 AND c = '?' AND d = $1"
        );
        assert_eq!(postgres_placeholders("VALUES (?, ?)"), "VALUES ($1, $2)");
    }

    #[test]
    fn sqlite_schemas_become_postgres_schemas() {
        assert_eq!(
            postgres_ddl(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, context TEXT, \
                 data BLOB) WITHOUT ROWID;"
            ),
            "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT COLLATE \"C\" NOT NULL, \
             context TEXT COLLATE \"C\", data BYTEA) ;"
        );
    }

    /// SQLite's own "database or disk is full" (here from a page limit, as a full disk gives
    /// it), however deep it sits in a chain of errors; other failures are not "full".
    #[test]
    fn a_full_database_is_recognised_through_the_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("token store: {source}")]
        struct Wrapper {
            source: SqlError,
        }
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        connection
            .execute_batch("CREATE TABLE t (b BLOB UNIQUE); PRAGMA max_page_count = 8")
            .unwrap();
        let full = (0..100)
            .find_map(|_| {
                connection
                    .execute("INSERT INTO t VALUES (randomblob(2000))", [])
                    .err()
            })
            .expect("the page limit is reached");
        let full = Wrapper {
            source: SqlError::from(full),
        };
        assert!(is_storage_full(&full), "{full}");
        assert!(is_storage_full(&std::io::Error::from(
            std::io::ErrorKind::StorageFull
        )));

        let other = rusqlite::Connection::open_in_memory().unwrap();
        other
            .execute_batch("CREATE TABLE u (k INTEGER PRIMARY KEY); INSERT INTO u VALUES (1)")
            .unwrap();
        let duplicate = other.execute("INSERT INTO u VALUES (1)", []).unwrap_err();
        let duplicate = Wrapper {
            source: SqlError::from(duplicate),
        };
        assert!(!is_storage_full(&duplicate));
    }

    #[test]
    fn sqlite_round_trips_every_kind_of_value() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        // Through the trait, as callers use it (rusqlite has an inherent `execute`).
        let conn: &dyn Sql = &connection;
        conn.batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let none: Option<String> = None;
        let changed = conn
            .execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                params![7u32, 1.5, "x", vec![1u8, 2], none],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let row = conn
            .one("SELECT i, r, s, b, n FROM t", &[], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, f64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            })
            .unwrap();
        assert_eq!(row, Some((7, 1.5, "x".into(), vec![1, 2], None)));
        let wrong = conn
            .one("SELECT s FROM t", &[], |row| row.get::<_, i64>(0))
            .unwrap_err();
        assert!(wrong.to_string().contains("column 0"), "{wrong}");
        assert_eq!(conn.tables().unwrap(), ["t"]);
    }
}
