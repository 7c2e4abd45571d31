//! A small, honest subset of KQL for Resource Graph queries: a tokenizer, a parser into an
//! AST and an evaluator over JSON rows. Anything outside the subset is an error that names
//! the unsupported part (README.md, "Resource Graph query subset").

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Value};

/// A query the subset cannot parse or does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KqlError {
    #[error("syntax error at character {pos}: {msg}")]
    Syntax { pos: usize, msg: String },
    #[error("unsupported by azsim's KQL subset: {0}")]
    Unsupported(String),
}

impl KqlError {
    fn syntax(pos: usize, msg: impl Into<String>) -> Self {
        KqlError::Syntax { pos, msg: msg.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Pipe,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Op(&'static str),
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, KqlError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'|' => {
                out.push((start, Tok::Pipe));
                i += 1;
            }
            b',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            b'(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            b'[' => {
                out.push((start, Tok::LBracket));
                i += 1;
            }
            b']' => {
                out.push((start, Tok::RBracket));
                i += 1;
            }
            b'.' => {
                out.push((start, Tok::Dot));
                i += 1;
            }
            b'\'' | b'"' => {
                let quote = c;
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&ch) = b.get(i) else {
                        return Err(KqlError::syntax(start, "unterminated string literal"));
                    };
                    if ch == quote {
                        i += 1;
                        break;
                    }
                    if ch == b'\\' {
                        let Some(&esc) = b.get(i + 1) else {
                            return Err(KqlError::syntax(i, "dangling escape in string literal"));
                        };
                        s.push(match esc {
                            b'n' => '\n',
                            b't' => '\t',
                            b'\\' => '\\',
                            b'\'' => '\'',
                            b'"' => '"',
                            _ => return Err(KqlError::syntax(i, "unknown escape in string literal")),
                        });
                        i += 2;
                        continue;
                    }
                    // Copy one UTF-8 character.
                    let ch_len = utf8_len(ch);
                    let end = (i + ch_len).min(b.len());
                    s.push_str(std::str::from_utf8(&b[i..end]).map_err(|_| KqlError::syntax(i, "invalid UTF-8"))?);
                    i = end;
                }
                out.push((start, Tok::Str(s)));
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = b.get(i + 1).copied();
                let (op, len): (&'static str, usize) = match (c, two) {
                    (b'=', Some(b'=')) => ("==", 2),
                    (b'=', Some(b'~')) => ("=~", 2),
                    (b'!', Some(b'=')) => ("!=", 2),
                    (b'!', Some(b'~')) => ("!~", 2),
                    (b'<', Some(b'=')) => ("<=", 2),
                    (b'>', Some(b'=')) => (">=", 2),
                    (b'<', _) => ("<", 1),
                    (b'>', _) => (">", 1),
                    (b'=', _) => ("=", 1),
                    (b'!', Some(x)) if x.is_ascii_alphabetic() => {
                        // `!contains`, `!in~`, `!startswith` …
                        i += 1;
                        let (word, next) = read_word(b, i);
                        i = next;
                        out.push((start, Tok::Ident(format!("!{word}"))));
                        continue;
                    }
                    _ => return Err(KqlError::syntax(start, "unexpected '!'")),
                };
                out.push((start, Tok::Op(op)));
                i += len;
            }
            b'0'..=b'9' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                let text = &src[i..j];
                let n: f64 = text.parse().map_err(|_| KqlError::syntax(start, format!("bad number {text:?}")))?;
                out.push((start, Tok::Num(n)));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let (word, next) = read_word(b, i);
                i = next;
                out.push((start, Tok::Ident(word)));
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(KqlError::syntax(start, format!("unexpected character {ch:?}")));
            }
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// An identifier: letters, digits, `_`, `$`, `-` inside words like `project-away`, and a
/// trailing `~` (for `in~`) or `_cs` suffixes.
fn read_word(b: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
        i += 1;
    }
    // `project-away`, `mv-expand` …: keep the dash so the error names the operator.
    if i < b.len() && b[i] == b'-' && b.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
        let word = String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase();
        if matches!(word.as_str(), "project" | "mv" | "make") {
            i += 1;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
        }
    }
    if i < b.len() && b[i] == b'~' {
        i += 1;
    }
    (String::from_utf8_lossy(&b[start..i]).into_owned(), i)
}

/// Scalar functions of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    ToLower,
    ToUpper,
    ToString,
    IsNotEmpty,
    IsEmpty,
    IsNull,
    IsNotNull,
}

/// Binary string/compare operators of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    EqCi,
    NeCi,
    Contains,
    NotContains,
    ContainsCs,
    StartsWith,
    NotStartsWith,
    EndsWith,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Column and property path, e.g. `properties.encryption.status`.
    Path(Vec<Seg>),
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    Call(Func, Box<Expr>),
    Bin(Box<Expr>, BinOp, Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        case_insensitive: bool,
        negated: bool,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Where(Expr),
    Project(Vec<(String, Expr)>),
    Extend(Vec<(String, Expr)>),
    OrderBy(Vec<(Expr, bool)>),
    Take(usize),
}

/// Which table the query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Resources,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub table: Table,
    pub ops: Vec<Op>,
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map(|(p, _)| *p).unwrap_or(self.end)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }
    fn peek_word(&self) -> Option<String> {
        match self.peek() {
            Some(Tok::Ident(w)) => Some(w.to_ascii_lowercase()),
            _ => None,
        }
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_word().as_deref() == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), KqlError> {
        let at = self.at();
        match self.next() {
            Some(x) if x == t => Ok(()),
            _ => Err(KqlError::syntax(at, format!("expected {what}"))),
        }
    }

    fn query(&mut self) -> Result<Query, KqlError> {
        let at = self.at();
        let table = match self.next() {
            Some(Tok::Ident(w)) if w == "Resources" || w == "resources" => Table::Resources,
            Some(Tok::Ident(w)) => {
                return Err(KqlError::Unsupported(format!("table {w:?} (only Resources is served)")));
            }
            _ => return Err(KqlError::syntax(at, "a query starts with a table name")),
        };
        let mut ops = Vec::new();
        while self.peek().is_some() {
            self.expect(Tok::Pipe, "'|' between operators")?;
            let at = self.at();
            let word = match self.next() {
                Some(Tok::Ident(w)) => w,
                _ => return Err(KqlError::syntax(at, "expected an operator after '|'")),
            };
            let op = match word.to_ascii_lowercase().as_str() {
                "where" | "filter" => Op::Where(self.expr()?),
                "project" => Op::Project(self.columns(false)?),
                "extend" => Op::Extend(self.columns(true)?),
                "order" | "sort" => {
                    if !self.eat_word("by") {
                        return Err(KqlError::syntax(self.at(), format!("expected 'by' after '{word}'")));
                    }
                    let mut keys = Vec::new();
                    loop {
                        let e = self.expr()?;
                        // KQL sorts descending unless told otherwise.
                        let desc = if self.eat_word("asc") {
                            false
                        } else {
                            self.eat_word("desc");
                            true
                        };
                        if self.peek_word().as_deref() == Some("nulls") {
                            return Err(KqlError::Unsupported("'nulls first/last' in order by".into()));
                        }
                        keys.push((e, desc));
                        if self.peek() == Some(&Tok::Comma) {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                    Op::OrderBy(keys)
                }
                "take" | "limit" => {
                    let at = self.at();
                    match self.next() {
                        Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => Op::Take(n as usize),
                        _ => return Err(KqlError::syntax(at, format!("'{word}' needs a whole number"))),
                    }
                }
                other => return Err(KqlError::Unsupported(format!("operator '{other}'"))),
            };
            ops.push(op);
        }
        Ok(Query { table, ops })
    }

    fn columns(&mut self, need_name: bool) -> Result<Vec<(String, Expr)>, KqlError> {
        let mut cols = Vec::new();
        loop {
            let at = self.at();
            // `name = expr` or a bare expression.
            let named = matches!(
                (self.toks.get(self.pos).map(|t| &t.1), self.toks.get(self.pos + 1).map(|t| &t.1)),
                (Some(Tok::Ident(_)), Some(Tok::Op("=")))
            );
            if named {
                let Some(Tok::Ident(name)) = self.next() else {
                    return Err(KqlError::syntax(at, "expected a column name"));
                };
                self.pos += 1;
                cols.push((name, self.expr()?));
            } else {
                if need_name {
                    return Err(KqlError::syntax(at, "extend needs 'name = expression'"));
                }
                let e = self.expr()?;
                let name = match &e {
                    Expr::Path(segs) => segs
                        .iter()
                        .map(|s| match s {
                            Seg::Key(k) => k.clone(),
                            Seg::Index(i) => i.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("_"),
                    _ => format!("Column{}", cols.len() + 1),
                };
                cols.push((name, e));
            }
            if self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
            } else {
                return Ok(cols);
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.and_expr()?;
        while self.eat_word("or") {
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, KqlError> {
        let mut left = self.cmp()?;
        while self.eat_word("and") {
            let right = self.cmp()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Expr, KqlError> {
        let left = self.primary()?;
        let op = match self.peek() {
            Some(Tok::Op(o)) => match *o {
                "==" => Some(BinOp::Eq),
                "!=" => Some(BinOp::Ne),
                "=~" => Some(BinOp::EqCi),
                "!~" => Some(BinOp::NeCi),
                "<" => Some(BinOp::Lt),
                "<=" => Some(BinOp::Le),
                ">" => Some(BinOp::Gt),
                ">=" => Some(BinOp::Ge),
                "=" => return Err(KqlError::syntax(self.at(), "'=' is not a comparison; use '==' or '=~'")),
                _ => None,
            },
            Some(Tok::Ident(w)) => {
                let w = w.to_ascii_lowercase();
                match w.as_str() {
                    "contains" => Some(BinOp::Contains),
                    "!contains" => Some(BinOp::NotContains),
                    "contains_cs" => Some(BinOp::ContainsCs),
                    "startswith" => Some(BinOp::StartsWith),
                    "!startswith" => Some(BinOp::NotStartsWith),
                    "endswith" => Some(BinOp::EndsWith),
                    "in" | "in~" | "!in" | "!in~" => {
                        self.pos += 1;
                        return self.in_list(left, w.ends_with('~'), w.starts_with('!'));
                    }
                    "and" | "or" | "asc" | "desc" => None,
                    other if other.starts_with('!') || is_string_operator(other) => {
                        return Err(KqlError::Unsupported(format!("operator '{other}'")));
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(op) = op else { return Ok(left) };
        self.pos += 1;
        let right = self.primary()?;
        Ok(Expr::Bin(Box::new(left), op, Box::new(right)))
    }

    fn in_list(&mut self, left: Expr, ci: bool, negated: bool) -> Result<Expr, KqlError> {
        self.expect(Tok::LParen, "'(' after in")?;
        let mut list = Vec::new();
        if self.peek() != Some(&Tok::RParen) {
            loop {
                list.push(self.primary()?);
                if self.peek() == Some(&Tok::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(Tok::RParen, "')' closing the in list")?;
        Ok(Expr::In { expr: Box::new(left), list, case_insensitive: ci, negated })
    }

    fn primary(&mut self) -> Result<Expr, KqlError> {
        let at = self.at();
        match self.next() {
            Some(Tok::Str(s)) => Ok(Expr::Str(s)),
            Some(Tok::Num(n)) => Ok(Expr::Num(n)),
            Some(Tok::LParen) => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(e)
            }
            Some(Tok::Ident(w)) => {
                let lower = w.to_ascii_lowercase();
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    if lower == "not" {
                        let e = self.expr()?;
                        self.expect(Tok::RParen, "')'")?;
                        return Ok(Expr::Not(Box::new(e)));
                    }
                    let func = match lower.as_str() {
                        "tolower" => Func::ToLower,
                        "toupper" => Func::ToUpper,
                        "tostring" => Func::ToString,
                        "isnotempty" => Func::IsNotEmpty,
                        "isempty" => Func::IsEmpty,
                        "isnull" => Func::IsNull,
                        "isnotnull" => Func::IsNotNull,
                        _ => return Err(KqlError::Unsupported(format!("function '{w}()'"))),
                    };
                    let arg = self.expr()?;
                    if self.peek() == Some(&Tok::Comma) {
                        return Err(KqlError::Unsupported(format!("more than one argument to '{w}()'")));
                    }
                    self.expect(Tok::RParen, "')' closing the function call")?;
                    return Ok(Expr::Call(func, Box::new(arg)));
                }
                match lower.as_str() {
                    "true" => return Ok(Expr::Bool(true)),
                    "false" => return Ok(Expr::Bool(false)),
                    "null" => return Ok(Expr::Null),
                    "and" | "or" | "by" | "asc" | "desc" => {
                        return Err(KqlError::syntax(at, format!("expected a value, found '{w}'")));
                    }
                    _ => {}
                }
                if w.starts_with('!') || w.ends_with('~') {
                    return Err(KqlError::syntax(at, format!("expected a value, found '{w}'")));
                }
                let mut segs = vec![Seg::Key(w)];
                loop {
                    match self.peek() {
                        Some(Tok::Dot) => {
                            self.pos += 1;
                            let at = self.at();
                            match self.next() {
                                Some(Tok::Ident(k)) if !k.starts_with('!') => segs.push(Seg::Key(k)),
                                _ => return Err(KqlError::syntax(at, "expected a property name after '.'")),
                            }
                        }
                        Some(Tok::LBracket) => {
                            self.pos += 1;
                            let at = self.at();
                            match self.next() {
                                Some(Tok::Str(k)) => segs.push(Seg::Key(k)),
                                Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => segs.push(Seg::Index(n as usize)),
                                _ => return Err(KqlError::syntax(at, "expected a string or index inside [ ]")),
                            }
                            self.expect(Tok::RBracket, "']'")?;
                        }
                        _ => break,
                    }
                }
                Ok(Expr::Path(segs))
            }
            Some(t) => Err(KqlError::syntax(at, format!("expected a value, found {t:?}"))),
            None => Err(KqlError::syntax(at, "expected a value, found the end of the query")),
        }
    }
}

fn is_string_operator(w: &str) -> bool {
    matches!(
        w,
        "has"
            | "hasprefix"
            | "hassuffix"
            | "matches"
            | "startswith_cs"
            | "endswith_cs"
            | "has_cs"
            | "has_any"
            | "has_all"
            | "between"
            | "like"
    )
}

impl Query {
    /// Parse a query text of the subset.
    pub fn parse(text: &str) -> Result<Query, KqlError> {
        let toks = tokenize(text)?;
        let mut p = Parser { toks, pos: 0, end: text.len() };
        p.query()
    }

    /// Whether the output rows carry an `id` column (needed for stable paging).
    pub fn projects_id(&self) -> bool {
        let mut has_id = true;
        for op in &self.ops {
            if let Op::Project(cols) = op {
                has_id = cols.iter().any(|(n, _)| n == "id");
            }
        }
        has_id
    }

    /// Run over rows (each a JSON object), returning the result rows in order. Rows are
    /// borrowed until an operator needs to build new ones.
    pub fn run<'a>(&self, rows: impl Iterator<Item = &'a Value>) -> Vec<Cow<'a, Value>> {
        let mut cur = run_ops(&self.ops, rows);
        if let Some(Op::Project(cols)) = self.ops.last() {
            // run_ops leaves a final project to the caller (see `page`).
            cur = cur.into_iter().map(|r| Cow::Owned(project_row(cols, &r))).collect();
        }
        cur
    }

    /// Run and return rows `skip..skip+top` plus the total count. Projections and
    /// extensions after the last filtering/sorting operator are applied to the page only,
    /// and a final `project` is applied while serializing, borrowing from the rows.
    pub fn page<'q, 'a>(&'q self, rows: impl Iterator<Item = &'a Value>, skip: usize, top: usize) -> Page<'q, 'a> {
        let split = self
            .ops
            .iter()
            .rposition(|op| matches!(op, Op::Where(_) | Op::OrderBy(_) | Op::Take(_)))
            .map(|i| i + 1)
            .unwrap_or(0);
        let (head, tail) = self.ops.split_at(split);
        let (tail, last_project) = match tail.split_last() {
            Some((Op::Project(cols), rest)) => (rest, Some(cols.as_slice())),
            _ => (tail, None),
        };
        let all = run_ops_full(head, rows);
        let total = all.len();
        let mut page: Vec<Cow<'a, Value>> = all.into_iter().skip(skip).take(top).collect();
        for op in tail {
            page = apply(op, page);
        }
        Page { total, rows: page, project: last_project }
    }
}

/// One page of results; serializes as a JSON array of row objects.
pub struct Page<'q, 'a> {
    pub total: usize,
    rows: Vec<Cow<'a, Value>>,
    project: Option<&'q [(String, Expr)]>,
}

impl Page<'_, '_> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The page as owned JSON rows.
    pub fn into_values(self) -> Vec<Value> {
        match self.project {
            Some(cols) => self.rows.iter().map(|r| project_row(cols, r)).collect(),
            None => self.rows.into_iter().map(Cow::into_owned).collect(),
        }
    }
}

struct Projected<'x> {
    row: &'x Value,
    cols: &'x [(String, Expr)],
}

impl serde::Serialize for Projected<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.cols.len()))?;
        for (name, e) in self.cols {
            m.serialize_entry(name, eval(e, self.row).as_ref())?;
        }
        m.end()
    }
}

impl serde::Serialize for Page<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for r in &self.rows {
            match self.project {
                Some(cols) => seq.serialize_element(&Projected { row: r, cols })?,
                None => seq.serialize_element(r.as_ref())?,
            }
        }
        seq.end()
    }
}

fn project_row(cols: &[(String, Expr)], r: &Value) -> Value {
    let mut m = Map::new();
    for (name, e) in cols {
        m.insert(name.clone(), eval(e, r).into_owned());
    }
    Value::Object(m)
}

fn apply<'a>(op: &Op, cur: Vec<Cow<'a, Value>>) -> Vec<Cow<'a, Value>> {
    let mut cur = cur;
    match op {
        Op::Where(e) => cur.retain(|r| truthy(&eval(e, r))),
        Op::Project(cols) => cur = cur.into_iter().map(|r| Cow::Owned(project_row(cols, &r))).collect(),
        Op::Extend(cols) => {
            cur = cur
                .into_iter()
                .map(|r| {
                    let extra: Vec<(String, Value)> =
                        cols.iter().map(|(n, e)| (n.clone(), eval(e, &r).into_owned())).collect();
                    let mut owned = r.into_owned();
                    if let Value::Object(m) = &mut owned {
                        for (n, v) in extra {
                            m.insert(n, v);
                        }
                    }
                    Cow::Owned(owned)
                })
                .collect();
        }
        Op::OrderBy(keys) => {
            let mut keyed: Vec<(Vec<Value>, Cow<'a, Value>)> =
                cur.into_iter().map(|r| (keys.iter().map(|(e, _)| eval(e, &r).into_owned()).collect(), r)).collect();
            keyed.sort_by(|(a, _), (b, _)| {
                for (i, (_, desc)) in keys.iter().enumerate() {
                    let o = compare(&a[i], &b[i]);
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
            cur = keyed.into_iter().map(|(_, r)| r).collect();
        }
        Op::Take(n) => cur.truncate(*n),
    }
    cur
}

/// All operators except a final `project` (left to the caller).
fn run_ops<'a>(ops: &[Op], rows: impl Iterator<Item = &'a Value>) -> Vec<Cow<'a, Value>> {
    match ops.split_last() {
        Some((Op::Project(_), rest)) => run_ops_full(rest, rows),
        _ => run_ops_full(ops, rows),
    }
}

fn run_ops_full<'a>(ops: &[Op], rows: impl Iterator<Item = &'a Value>) -> Vec<Cow<'a, Value>> {
    let mut cur: Vec<Cow<'a, Value>> = Vec::new();
    let mut ops = ops;
    // Fuse leading `where`s into the scan so untouched rows are never copied.
    let mut leading = Vec::new();
    while let [Op::Where(e), rest @ ..] = ops {
        leading.push(e);
        ops = rest;
    }
    for r in rows {
        if leading.iter().all(|e| truthy(&eval(e, r))) {
            cur.push(Cow::Borrowed(r));
        }
    }
    for op in ops {
        cur = apply(op, cur);
    }
    cur
}

fn lookup<'a>(row: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    let mut v = row;
    for s in segs {
        v = match (s, v) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

static NULL: Value = Value::Null;

fn eval<'a>(e: &Expr, row: &'a Value) -> Cow<'a, Value> {
    match e {
        Expr::Path(segs) => Cow::Borrowed(lookup(row, segs).unwrap_or(&NULL)),
        Expr::Str(s) => Cow::Owned(Value::String(s.clone())),
        Expr::Num(n) => Cow::Owned(serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null)),
        Expr::Bool(b) => Cow::Owned(Value::Bool(*b)),
        Expr::Null => Cow::Borrowed(&NULL),
        Expr::Call(f, arg) => {
            let v = eval(arg, row);
            Cow::Owned(match f {
                Func::ToLower => Value::String(as_text(&v).to_lowercase()),
                Func::ToUpper => Value::String(as_text(&v).to_uppercase()),
                Func::ToString => Value::String(as_text(&v).into_owned()),
                Func::IsNotEmpty => Value::Bool(!is_empty(&v)),
                Func::IsEmpty => Value::Bool(is_empty(&v)),
                Func::IsNull => Value::Bool(v.is_null()),
                Func::IsNotNull => Value::Bool(!v.is_null()),
            })
        }
        Expr::Bin(l, op, r) => {
            let b = match op {
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                    binary(&eval(l, row), *op, &eval(r, row))
                }
                _ => string_op(&text(l, row), *op, &text(r, row)),
            };
            Cow::Owned(Value::Bool(b))
        }
        Expr::In { expr, list, case_insensitive, negated } => {
            let t = text(expr, row);
            let found = list.iter().any(|item| {
                let it = text(item, row);
                if *case_insensitive { eq_ci(&t, &it) } else { t == it }
            });
            Cow::Owned(Value::Bool(found != *negated))
        }
        Expr::Not(x) => Cow::Owned(Value::Bool(!truthy(&eval(x, row)))),
        Expr::And(a, b) => Cow::Owned(Value::Bool(truthy(&eval(a, row)) && truthy(&eval(b, row)))),
        Expr::Or(a, b) => Cow::Owned(Value::Bool(truthy(&eval(a, row)) || truthy(&eval(b, row)))),
    }
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The text form used by string operators: strings as is, null as "", other values as JSON.
fn as_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn lower_contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// The text form of an expression, borrowing from the row or the query where it can
/// (string operators run over every row of a sweep).
fn text<'x>(e: &'x Expr, row: &'x Value) -> Cow<'x, str> {
    match e {
        Expr::Str(s) => Cow::Borrowed(s.as_str()),
        Expr::Path(segs) => lookup(row, segs).map(as_text).unwrap_or(Cow::Borrowed("")),
        Expr::Call(Func::ToString, a) => text(a, row),
        Expr::Call(Func::ToLower, a) => {
            let t = text(a, row);
            if t.is_ascii() && !t.bytes().any(|b| b.is_ascii_uppercase()) { t } else { Cow::Owned(t.to_lowercase()) }
        }
        other => Cow::Owned(as_text(&eval(other, row)).into_owned()),
    }
}

fn eq_ci(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() { a.eq_ignore_ascii_case(b) } else { a.to_lowercase() == b.to_lowercase() }
}

fn starts_ci(a: &str, p: &str) -> bool {
    if a.is_ascii() && p.is_ascii() {
        a.len() >= p.len() && a.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    } else {
        a.to_lowercase().starts_with(&p.to_lowercase())
    }
}

fn ends_ci(a: &str, p: &str) -> bool {
    if a.is_ascii() && p.is_ascii() {
        a.len() >= p.len() && a.as_bytes()[a.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
    } else {
        a.to_lowercase().ends_with(&p.to_lowercase())
    }
}

fn string_op(l: &str, op: BinOp, r: &str) -> bool {
    match op {
        BinOp::EqCi => eq_ci(l, r),
        BinOp::NeCi => !eq_ci(l, r),
        BinOp::Contains => lower_contains(l, r),
        BinOp::NotContains => !lower_contains(l, r),
        BinOp::ContainsCs => l.contains(r),
        BinOp::StartsWith => starts_ci(l, r),
        BinOp::NotStartsWith => !starts_ci(l, r),
        BinOp::EndsWith => ends_ci(l, r),
        _ => false,
    }
}

fn binary(l: &Value, op: BinOp, r: &Value) -> bool {
    match op {
        BinOp::Eq => equal(l, r),
        BinOp::Ne => !equal(l, r),
        BinOp::EqCi
        | BinOp::NeCi
        | BinOp::Contains
        | BinOp::NotContains
        | BinOp::ContainsCs
        | BinOp::StartsWith
        | BinOp::NotStartsWith
        | BinOp::EndsWith => string_op(&as_text(l), op, &as_text(r)),
        BinOp::Lt => !l.is_null() && !r.is_null() && compare(l, r) == Ordering::Less,
        BinOp::Le => !l.is_null() && !r.is_null() && compare(l, r) != Ordering::Greater,
        BinOp::Gt => !l.is_null() && !r.is_null() && compare(l, r) == Ordering::Greater,
        BinOp::Ge => !l.is_null() && !r.is_null() && compare(l, r) != Ordering::Less,
    }
}

fn equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Bool(a), Value::Bool(b)) => a == b,
        _ => as_text(l) == as_text(r),
    }
}

/// Total order for sorting: nulls first, then booleans, numbers, strings, other JSON.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ if rank(a) != rank(b) => rank(a).cmp(&rank(b)),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rows() -> Vec<Value> {
        vec![
            json!({"id": "/r/a", "name": "Alpha", "type": "microsoft.containerregistry/registries",
                   "properties": {"encryption": {"status": "enabled", "keyVaultProperties": {"keyIdentifier": "https://kv1.vault.azsim.test:1/keys/K1"}}}}),
            json!({"id": "/r/b", "name": "beta", "type": "microsoft.containerregistry/registries",
                   "properties": {"encryption": {"status": "disabled"}}}),
            json!({"id": "/r/c", "name": "gamma", "type": "microsoft.keyvault/vaults", "properties": {}}),
        ]
    }

    fn names(q: &str) -> Vec<String> {
        let rows = rows();
        let q = Query::parse(q).unwrap();
        q.run(rows.iter()).iter().map(|r| r["name"].as_str().unwrap_or("").to_owned()).collect()
    }

    #[test]
    fn where_and_or_project_order() {
        assert_eq!(names("Resources | where type =~ 'Microsoft.ContainerRegistry/registries'"), ["Alpha", "beta"]);
        assert_eq!(names("resources | where name == 'alpha' or name == 'beta'"), ["beta"]);
        assert_eq!(
            names("Resources | where name =~ 'ALPHA' and isnotempty(properties.encryption.keyVaultProperties)"),
            ["Alpha"]
        );
        assert_eq!(
            names(
                "Resources | where tolower(tostring(properties.encryption.keyVaultProperties.keyIdentifier)) startswith 'https://kv1.vault.azsim.test:1/keys/k1'"
            ),
            ["Alpha"]
        );
        assert_eq!(names("Resources | where name in~ ('ALPHA', 'GAMMA') | order by name asc"), ["Alpha", "gamma"]);
        assert_eq!(names("Resources | where name !in ('beta') | order by name"), ["gamma", "Alpha"]);
        assert_eq!(names("Resources | where properties['encryption'].status != 'enabled' | take 1"), ["beta"]);
        assert_eq!(names("Resources | where name contains 'MM'"), ["gamma"]);
        assert_eq!(names("Resources | where not(name contains 'a')"), Vec::<String>::new());
    }

    #[test]
    fn project_names_columns() {
        let rows = rows();
        let q = Query::parse("Resources | project id, n = name, properties.encryption.status").unwrap();
        let out = q.run(rows.iter());
        assert_eq!(out[0].as_ref(), &json!({"id": "/r/a", "n": "Alpha", "properties_encryption_status": "enabled"}));
        assert!(q.projects_id());
        assert!(!Query::parse("Resources | project name").unwrap().projects_id());
    }

    #[test]
    fn unsupported_parts_are_named() {
        let e = Query::parse("Resources | summarize count() by type").unwrap_err();
        assert_eq!(e, KqlError::Unsupported("operator 'summarize'".into()));
        let e = Query::parse("Resources | where name has 'x'").unwrap_err();
        assert_eq!(e, KqlError::Unsupported("operator 'has'".into()));
        let e = Query::parse("ResourceContainers").unwrap_err();
        assert!(e.to_string().contains("ResourceContainers"));
        let e = Query::parse("Resources | where strcat(name) == 'x'").unwrap_err();
        assert!(e.to_string().contains("strcat"));
        let e = Query::parse("Resources | project-away name").unwrap_err();
        assert!(e.to_string().contains("project-away"), "{e}");
        assert!(matches!(Query::parse("Resources | where name == 'x"), Err(KqlError::Syntax { .. })));
    }

    #[test]
    fn page_equals_slice_of_run() {
        let rows = rows();
        for q in [
            "Resources",
            "Resources | project id, name",
            "Resources | where name != 'x' | project id, n = tolower(name) | order by n asc",
            "Resources | project id, name | where name startswith 'a' or name startswith 'g'",
            "Resources | extend t = type | project id, t",
            "Resources | order by name asc | extend lname = tolower(name)",
        ] {
            let q = Query::parse(q).unwrap();
            let all: Vec<Value> = q.run(rows.iter()).into_iter().map(Cow::into_owned).collect();
            for (skip, top) in [(0, 1), (1, 1), (0, 10), (2, 5), (5, 5)] {
                let page = q.page(rows.iter(), skip, top);
                assert_eq!(page.total, all.len());
                let want: Vec<Value> = all.iter().skip(skip).take(top).cloned().collect();
                let via_serde: Value = serde_json::to_value(q.page(rows.iter(), skip, top)).unwrap();
                assert_eq!(via_serde, Value::Array(want.clone()));
                assert_eq!(page.into_values(), want);
            }
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,80}") {
            let _ = Query::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_kqlish(s in "(Resources|resources)( \\| (where|project|order by|take|extend) [a-z.=~!'() ,0-9]{0,20}){0,4}") {
            if let Ok(q) = Query::parse(&s) {
                let rows = rows();
                let _ = q.run(rows.iter());
            }
        }

        #[test]
        fn string_literals_round_trip(s in "[^'\\\\]{0,30}") {
            let q = Query::parse(&format!("Resources | where name == '{s}'")).unwrap();
            match &q.ops[0] {
                Op::Where(Expr::Bin(_, BinOp::Eq, r)) => prop_assert_eq!(r.as_ref(), &Expr::Str(s.clone())),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
