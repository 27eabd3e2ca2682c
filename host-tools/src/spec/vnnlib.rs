//! VNN-LIB parser (the VNN-COMP subset).
//!
//! Supported: `;` comments; `(declare-const X_i Real)` and `(declare-const Y_i Real)`;
//! `(assert F)` where `F` is built from `and`, `or`, and comparisons `<=`, `>=` (also
//! `<`, `>`, read as their non-strict forms, which can only enlarge the unsafe set, and
//! `=`, read as both) between linear terms (`+`, `-`, `*` by a constant, `/` by a
//! constant, numbers in integer, decimal or scientific notation). `check-sat`,
//! `set-logic`, `set-info`, `set-option`, `get-model` and `exit` are accepted and ignored.
//!
//! The asserts are conjoined and put in disjunctive normal form. Each disjunct must bound
//! every input from both sides with single-variable bounds; its output constraints form
//! one unsafe [`Conjunction`]. Disjuncts with the same input box are grouped into one
//! [`Case`]. This covers both the plain form (input bounds, then output constraints) and
//! the `(assert (or (and X-bounds... Y-constraints...) ...))` form.
//!
//! Errors name the file, the line and the column ([`SpecError`]); no input makes the
//! parser panic (nesting depth and the size of the normal form are limited).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Case, Conjunction, InputBox, LinearConstraint, Property};

/// Deepest parenthesis nesting accepted (VNN-COMP files use 4).
const MAX_DEPTH: usize = 256;
/// Most disjuncts accepted in the normal form of the whole file.
const MAX_TERMS: usize = 100_000;

/// Why a VNN-LIB file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {source}", .path.display())]
    Io {
        /// The property file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A problem at a position of the file.
    #[error("{}:{line}:{column}: {kind}", .path.display())]
    At {
        /// The property file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong.
        kind: SpecErrorKind,
    },
}

impl SpecError {
    /// What is wrong, unless the file could not be read at all.
    pub fn kind(&self) -> Option<&SpecErrorKind> {
        match self {
            SpecError::Io { .. } => None,
            SpecError::At { kind, .. } => Some(kind),
        }
    }

    /// The 1-based line of the problem, unless the file could not be read.
    pub fn line(&self) -> Option<usize> {
        match self {
            SpecError::Io { .. } => None,
            SpecError::At { line, .. } => Some(*line),
        }
    }
}

/// The kinds of problems in a VNN-LIB file.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpecErrorKind {
    /// A `(` without its `)`.
    #[error("unbalanced parentheses: this '(' is never closed")]
    UnclosedParen,
    /// A `)` without its `(`.
    #[error("unbalanced parentheses: unexpected ')'")]
    UnexpectedCloseParen,
    /// Malformed structure (wrong arity, a bare atom where a command belongs, ...).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A token that looks like a number but is not a finite one.
    #[error("bad number '{0}'")]
    BadNumber(String),
    /// A symbol that is not a variable name `X_<i>` / `Y_<i>`.
    #[error("unknown variable '{0}' (variables are X_<i> and Y_<i>)")]
    UnknownVariable(String),
    /// A variable used before (or without) its `declare-const`.
    #[error("undeclared variable '{0}'")]
    UndeclaredVariable(String),
    /// The same variable declared twice.
    #[error("variable '{0}' is declared twice")]
    DuplicateDeclaration(String),
    /// Variables must be numbered from 0 without gaps.
    #[error(
        "'{0}' is not declared, but a higher-numbered variable is (variables must be numbered from 0)"
    )]
    MissingDeclaration(String),
    /// A declaration with a sort other than `Real`.
    #[error("unsupported sort '{0}' (only Real)")]
    UnsupportedSort(String),
    /// An operator outside the supported subset, or used non-linearly.
    #[error("unsupported operator '{op}'{detail}")]
    UnsupportedOperator {
        /// The operator.
        op: String,
        /// Why, if more than "not supported" (starts with ": ").
        detail: String,
    },
    /// A top-level command outside the supported subset.
    #[error("unsupported command '{0}'")]
    UnsupportedCommand(String),
    /// A constraint over several inputs.
    #[error(
        "input constraint over several variables ({0}): input constraints must be single-variable bounds"
    )]
    MultiVariableInput(String),
    /// A constraint over both inputs and outputs.
    #[error("constraint mixes input and output variables")]
    MixedConstraint,
    /// An input without a lower or an upper bound (in some disjunct).
    #[error("{var} has no {side} bound{context}")]
    MissingBound {
        /// The input variable.
        var: String,
        /// "lower" or "upper".
        side: &'static str,
        /// Which disjunct, when there are several.
        context: String,
    },
    /// Bounds that leave no value for an input.
    #[error("empty box: {var} has lower bound {lower} above its upper bound {upper}")]
    EmptyBox {
        /// The input variable.
        var: String,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
    /// No `X_i` declared.
    #[error("no input variables (X_0 ...) are declared")]
    NoInputs,
    /// No `Y_i` declared.
    #[error("no output variables (Y_0 ...) are declared")]
    NoOutputs,
    /// The disjunctive normal form is too large.
    #[error("the property expands to more than {0} disjuncts")]
    TooManyDisjuncts(usize),
}

/// Parse a VNN-LIB file.
pub fn parse_file(path: &Path) -> Result<Property, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&String::from_utf8_lossy(&bytes), path)
}

/// Parse VNN-LIB text; `path` only names the source in error messages.
pub fn parse_str(text: &str, path: &Path) -> Result<Property, SpecError> {
    parse_text(text).map_err(|e| SpecError::At {
        path: path.to_path_buf(),
        line: e.pos.line,
        column: e.pos.column,
        kind: e.kind,
    })
}

/// A 1-based position in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Pos {
    line: usize,
    column: usize,
}

/// An error before the file name is attached.
#[derive(Debug)]
struct LocatedError {
    pos: Pos,
    kind: SpecErrorKind,
}

fn err<T>(pos: Pos, kind: SpecErrorKind) -> Result<T, LocatedError> {
    Err(LocatedError { pos, kind })
}

/// An S-expression with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
enum SExpr {
    Atom(String, Pos),
    List(Vec<SExpr>, Pos),
}

impl SExpr {
    fn pos(&self) -> Pos {
        match self {
            SExpr::Atom(_, p) | SExpr::List(_, p) => *p,
        }
    }
}

/// Split the text into top-level S-expressions.
fn read_sexprs(text: &str) -> Result<Vec<SExpr>, LocatedError> {
    let mut top = Vec::new();
    // Open lists: their items so far and the position of their '('.
    let mut stack: Vec<(Vec<SExpr>, Pos)> = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1usize, 1usize);
    let push = |stack: &mut Vec<(Vec<SExpr>, Pos)>, top: &mut Vec<SExpr>, e: SExpr| match stack
        .last_mut()
    {
        Some((items, _)) => items.push(e),
        None => top.push(e),
    };
    while let Some(&c) = chars.peek() {
        let pos = Pos { line, column };
        match c {
            '\n' => {
                chars.next();
                line += 1;
                column = 1;
            }
            c if c.is_whitespace() => {
                chars.next();
                column += 1;
            }
            ';' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '(' => {
                chars.next();
                column += 1;
                if stack.len() >= MAX_DEPTH {
                    return err(
                        pos,
                        SpecErrorKind::Syntax(format!(
                            "parentheses nested deeper than {MAX_DEPTH}"
                        )),
                    );
                }
                stack.push((Vec::new(), pos));
            }
            ')' => {
                chars.next();
                column += 1;
                let Some((items, open)) = stack.pop() else {
                    return err(pos, SpecErrorKind::UnexpectedCloseParen);
                };
                push(&mut stack, &mut top, SExpr::List(items, open));
            }
            '"' | '|' => {
                // A string literal or a quoted symbol: kept whole (only `set-info` uses them).
                let close = c;
                let mut s = String::from(c);
                chars.next();
                column += 1;
                let mut closed = false;
                for c in chars.by_ref() {
                    s.push(c);
                    if c == '\n' {
                        line += 1;
                        column = 1;
                    } else {
                        column += 1;
                    }
                    if c == close {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return err(
                        pos,
                        SpecErrorKind::Syntax(format!("unterminated {close}...{close}")),
                    );
                }
                push(&mut stack, &mut top, SExpr::Atom(s, pos));
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ';' | '"' | '|') {
                        break;
                    }
                    s.push(c);
                    chars.next();
                    column += 1;
                }
                push(&mut stack, &mut top, SExpr::Atom(s, pos));
            }
        }
    }
    if let Some((_, open)) = stack.last() {
        // Report the outermost unclosed '(' : where the reader lost track.
        let outermost = stack.first().map_or(*open, |(_, p)| *p);
        return err(outermost, SpecErrorKind::UnclosedParen);
    }
    Ok(top)
}

/// Input or output variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Var {
    X(usize),
    Y(usize),
}

impl std::fmt::Display for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Var::X(i) => write!(f, "X_{i}"),
            Var::Y(i) => write!(f, "Y_{i}"),
        }
    }
}

/// `X_<i>` or `Y_<i>`, else `None`.
fn parse_var(name: &str) -> Option<Var> {
    let (kind, digits) = name.split_at_checked(2)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: usize = digits.parse().ok()?;
    match kind {
        "X_" => Some(Var::X(index)),
        "Y_" => Some(Var::Y(index)),
        _ => None,
    }
}

/// True for tokens meant as numbers: a digit first, or a sign or '.' then a digit or '.'.
fn looks_numeric(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'-' | b'+' | b'.') => b.get(1).is_some_and(|c| c.is_ascii_digit() || *c == b'.'),
        _ => false,
    }
}

/// A finite number in integer, decimal or scientific notation.
fn parse_number(s: &str, pos: Pos) -> Result<f64, LocatedError> {
    let well_formed = s
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'));
    match s.parse::<f64>() {
        Ok(v) if well_formed && v.is_finite() => Ok(v),
        _ => err(pos, SpecErrorKind::BadNumber(s.to_string())),
    }
}

/// A linear expression `sum x_coeffs x + sum y_coeffs y + constant`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Linear {
    x: HashMap<usize, f64>,
    y: HashMap<usize, f64>,
    constant: f64,
}

impl Linear {
    fn constant(v: f64) -> Self {
        Linear {
            constant: v,
            ..Default::default()
        }
    }

    fn is_constant(&self) -> bool {
        self.x.values().all(|&c| c == 0.0) && self.y.values().all(|&c| c == 0.0)
    }

    fn add(mut self, other: &Linear, sign: f64) -> Self {
        for (&i, &c) in &other.x {
            *self.x.entry(i).or_insert(0.0) += sign * c;
        }
        for (&i, &c) in &other.y {
            *self.y.entry(i).or_insert(0.0) += sign * c;
        }
        self.constant += sign * other.constant;
        self
    }

    fn scale(mut self, s: f64) -> Self {
        self.x.values_mut().for_each(|c| *c *= s);
        self.y.values_mut().for_each(|c| *c *= s);
        self.constant *= s;
        self
    }
}

/// One constraint of a conjunction, after classification.
#[derive(Clone, Debug, PartialEq)]
enum Atom {
    /// `X_i >= value`.
    Lower(usize, f64, Pos),
    /// `X_i <= value`.
    Upper(usize, f64, Pos),
    /// A constraint on the outputs, sparse: `sum coeffs y <= rhs`.
    Output(Vec<(usize, f64)>, f64),
    /// A constraint without variables that fails (it makes its disjunct empty).
    False,
}

/// A formula in disjunctive normal form: a disjunction of conjunctions.
type Dnf = Vec<Vec<Atom>>;

/// The interpreter state: the declarations so far.
#[derive(Default)]
struct Declarations {
    inputs: HashMap<usize, Pos>,
    outputs: HashMap<usize, Pos>,
}

impl Declarations {
    fn declare(&mut self, items: &[SExpr], pos: Pos) -> Result<(), LocatedError> {
        let [_, SExpr::Atom(name, name_pos), sort] = items else {
            return err(
                pos,
                SpecErrorKind::Syntax("expected (declare-const NAME Real)".into()),
            );
        };
        let Some(var) = parse_var(name) else {
            return err(*name_pos, SpecErrorKind::UnknownVariable(name.clone()));
        };
        match sort {
            SExpr::Atom(s, _) if s == "Real" => {}
            other => {
                let text = match other {
                    SExpr::Atom(s, _) => s.clone(),
                    SExpr::List(..) => "(...)".into(),
                };
                return err(other.pos(), SpecErrorKind::UnsupportedSort(text));
            }
        }
        let map = match var {
            Var::X(i) => self.inputs.entry(i),
            Var::Y(i) => self.outputs.entry(i),
        };
        match map {
            std::collections::hash_map::Entry::Occupied(_) => {
                err(*name_pos, SpecErrorKind::DuplicateDeclaration(name.clone()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(*name_pos);
                Ok(())
            }
        }
    }

    /// The declared count `n` of `X_0..X_{n-1}` (or `Y_...`), checking there are no gaps.
    fn count(map: &HashMap<usize, Pos>, prefix: &str) -> Result<usize, LocatedError> {
        let n = map.len();
        if let Some((&i, &pos)) = map
            .iter()
            .filter(|(i, _)| **i >= n)
            .min_by_key(|(i, _)| **i)
        {
            let missing = (0..i).find(|k| !map.contains_key(k)).unwrap_or(0);
            return err(
                pos,
                SpecErrorKind::MissingDeclaration(format!("{prefix}_{missing}")),
            );
        }
        Ok(n)
    }

    /// A term: number, variable, or a linear combination.
    fn linear(&self, e: &SExpr) -> Result<Linear, LocatedError> {
        match e {
            SExpr::Atom(s, pos) => {
                if looks_numeric(s) {
                    return parse_number(s, *pos).map(Linear::constant);
                }
                let Some(var) = parse_var(s) else {
                    return err(*pos, SpecErrorKind::UnknownVariable(s.clone()));
                };
                let mut lin = Linear::default();
                match var {
                    Var::X(i) if self.inputs.contains_key(&i) => lin.x.insert(i, 1.0),
                    Var::Y(i) if self.outputs.contains_key(&i) => lin.y.insert(i, 1.0),
                    _ => return err(*pos, SpecErrorKind::UndeclaredVariable(s.clone())),
                };
                Ok(lin)
            }
            SExpr::List(items, pos) => {
                let (op, args) = head(items, *pos)?;
                if args.is_empty() {
                    return err(
                        *pos,
                        SpecErrorKind::Syntax(format!("'{op}' needs arguments")),
                    );
                }
                let terms = args
                    .iter()
                    .map(|a| self.linear(a))
                    .collect::<Result<Vec<_>, _>>()?;
                match op {
                    "+" => Ok(terms
                        .iter()
                        .fold(Linear::default(), |acc, t| acc.add(t, 1.0))),
                    "-" if terms.len() == 1 => Ok(terms[0].clone().scale(-1.0)),
                    "-" => Ok(terms[1..]
                        .iter()
                        .fold(terms[0].clone(), |acc, t| acc.add(t, -1.0))),
                    "*" => {
                        let mut product = Linear::constant(1.0);
                        let mut variable_factors = 0;
                        for t in terms {
                            if t.is_constant() {
                                product = product.scale(t.constant);
                            } else if product.is_constant() {
                                variable_factors += 1;
                                product = t.scale(product.constant);
                            } else {
                                variable_factors += 1;
                            }
                        }
                        if variable_factors > 1 {
                            return err(
                                *pos,
                                SpecErrorKind::UnsupportedOperator {
                                    op: "*".into(),
                                    detail: ": product of two variables is not linear".into(),
                                },
                            );
                        }
                        Ok(product)
                    }
                    "/" if terms.len() == 2
                        && terms[1].is_constant()
                        && terms[1].constant != 0.0 =>
                    {
                        Ok(terms[0].clone().scale(1.0 / terms[1].constant))
                    }
                    "/" => err(
                        *pos,
                        SpecErrorKind::UnsupportedOperator {
                            op: "/".into(),
                            detail: ": only division by a non-zero constant is linear".into(),
                        },
                    ),
                    other => err(
                        *pos,
                        SpecErrorKind::UnsupportedOperator {
                            op: other.into(),
                            detail: String::new(),
                        },
                    ),
                }
            }
        }
    }

    /// `lin <= 0` as a classified atom.
    fn atom(&self, lin: Linear, pos: Pos) -> Result<Atom, LocatedError> {
        let mut xs: Vec<(usize, f64)> = lin.x.into_iter().filter(|&(_, c)| c != 0.0).collect();
        let mut ys: Vec<(usize, f64)> = lin.y.into_iter().filter(|&(_, c)| c != 0.0).collect();
        xs.sort_by_key(|&(i, _)| i);
        ys.sort_by_key(|&(i, _)| i);
        match (xs.as_slice(), ys.is_empty()) {
            ([], true) => Ok(if lin.constant <= 0.0 {
                Atom::Output(Vec::new(), 0.0)
            } else {
                Atom::False
            }),
            ([], false) => Ok(Atom::Output(ys, -lin.constant)),
            (_, false) => err(pos, SpecErrorKind::MixedConstraint),
            ([(i, c)], true) => {
                let value = -lin.constant / c;
                if !value.is_finite() {
                    return err(
                        pos,
                        SpecErrorKind::BadNumber(format!("{value} (bound of X_{i})")),
                    );
                }
                Ok(if *c > 0.0 {
                    Atom::Upper(*i, value, pos)
                } else {
                    Atom::Lower(*i, value, pos)
                })
            }
            (many, true) => {
                let names: Vec<String> = many.iter().map(|(i, _)| format!("X_{i}")).collect();
                err(pos, SpecErrorKind::MultiVariableInput(names.join(", ")))
            }
        }
    }

    /// A formula in disjunctive normal form.
    fn formula(&self, e: &SExpr) -> Result<Dnf, LocatedError> {
        let (items, pos) = match e {
            SExpr::List(items, pos) => (items, *pos),
            SExpr::Atom(s, _) if s == "true" => return Ok(vec![vec![]]),
            SExpr::Atom(s, _) if s == "false" => return Ok(vec![]),
            SExpr::Atom(s, pos) => {
                return err(
                    *pos,
                    SpecErrorKind::Syntax(format!(
                        "expected a constraint in parentheses, found '{s}'"
                    )),
                );
            }
        };
        let (op, args) = head(items, pos)?;
        match op {
            "and" => {
                let mut dnf: Dnf = vec![vec![]];
                for a in args {
                    dnf = product(&dnf, &self.formula(a)?, pos)?;
                }
                Ok(dnf)
            }
            "or" => {
                let mut dnf = Dnf::new();
                for a in args {
                    dnf.extend(self.formula(a)?);
                    if dnf.len() > MAX_TERMS {
                        return err(pos, SpecErrorKind::TooManyDisjuncts(MAX_TERMS));
                    }
                }
                Ok(dnf)
            }
            "<=" | ">=" | "<" | ">" | "=" => {
                if args.len() < 2 {
                    return err(
                        pos,
                        SpecErrorKind::Syntax(format!("'{op}' needs at least two arguments")),
                    );
                }
                let terms = args
                    .iter()
                    .map(|a| self.linear(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut conj = Vec::new();
                for pair in terms.windows(2) {
                    // Each comparison as `lin <= 0`.
                    let le = pair[0].clone().add(&pair[1], -1.0);
                    let ge = pair[1].clone().add(&pair[0], -1.0);
                    match op {
                        "<=" | "<" => conj.push(self.atom(le, pos)?),
                        ">=" | ">" => conj.push(self.atom(ge, pos)?),
                        _ => {
                            conj.push(self.atom(le, pos)?);
                            conj.push(self.atom(ge, pos)?);
                        }
                    }
                }
                Ok(vec![conj])
            }
            other => err(
                pos,
                SpecErrorKind::UnsupportedOperator {
                    op: other.into(),
                    detail: String::new(),
                },
            ),
        }
    }
}

/// The operator and arguments of a list.
fn head(items: &[SExpr], pos: Pos) -> Result<(&str, &[SExpr]), LocatedError> {
    match items.split_first() {
        Some((SExpr::Atom(op, _), args)) => Ok((op.as_str(), args)),
        Some((other, _)) => err(
            other.pos(),
            SpecErrorKind::Syntax("expected an operator after '('".into()),
        ),
        None => err(pos, SpecErrorKind::Syntax("empty parentheses".into())),
    }
}

/// The conjunction of two formulas in DNF.
fn product(a: &Dnf, b: &Dnf, pos: Pos) -> Result<Dnf, LocatedError> {
    if a.len().saturating_mul(b.len()) > MAX_TERMS {
        return err(pos, SpecErrorKind::TooManyDisjuncts(MAX_TERMS));
    }
    Ok(a.iter()
        .flat_map(|ta| {
            b.iter()
                .map(move |tb| ta.iter().chain(tb).cloned().collect())
        })
        .collect())
}

/// Parse and interpret the text.
fn parse_text(text: &str) -> Result<Property, LocatedError> {
    let exprs = read_sexprs(text)?;
    let mut decls = Declarations::default();
    // Asserts that are single conjunctions apply to every disjunct; the others multiply.
    let mut common: Vec<Atom> = Vec::new();
    let mut disjunctive: Vec<(Dnf, Pos)> = Vec::new();
    for e in &exprs {
        let SExpr::List(items, pos) = e else {
            return err(
                e.pos(),
                SpecErrorKind::Syntax("expected a command in parentheses".into()),
            );
        };
        let (command, args) = head(items, *pos)?;
        match command {
            "declare-const" => decls.declare(items, *pos)?,
            "assert" => {
                let [formula] = args else {
                    return err(
                        *pos,
                        SpecErrorKind::Syntax("expected (assert FORMULA)".into()),
                    );
                };
                let mut dnf = decls.formula(formula)?;
                if dnf.len() == 1 {
                    common.append(&mut dnf[0]);
                } else {
                    disjunctive.push((dnf, *pos));
                }
            }
            "check-sat" | "set-logic" | "set-info" | "set-option" | "get-model" | "exit" => {}
            other => return err(*pos, SpecErrorKind::UnsupportedCommand(other.into())),
        }
    }
    let end = Pos {
        line: text.lines().count().max(1),
        column: 1,
    };
    let n_inputs = Declarations::count(&decls.inputs, "X")?;
    let n_outputs = Declarations::count(&decls.outputs, "Y")?;
    if n_inputs == 0 {
        return err(end, SpecErrorKind::NoInputs);
    }
    if n_outputs == 0 {
        return err(end, SpecErrorKind::NoOutputs);
    }
    let mut terms: Dnf = vec![vec![]];
    for (dnf, pos) in &disjunctive {
        terms = product(&terms, dnf, *pos)?;
    }
    let several = terms.len() > 1;

    let mut cases: Vec<Case> = Vec::new();
    let mut case_of_box: HashMap<Vec<u64>, usize> = HashMap::new();
    // A disjunct whose input box is empty holds no input and is skipped; the error is
    // kept for a file where that leaves nothing (most likely a typo).
    let mut empty_box: Option<LocatedError> = None;
    'terms: for (t, term) in terms.iter().enumerate() {
        let mut lower = vec![(f64::NEG_INFINITY, None); n_inputs];
        let mut upper = vec![(f64::INFINITY, None); n_inputs];
        let mut constraints = Vec::new();
        let mut feasible = true;
        for atom in common.iter().chain(term) {
            match atom {
                Atom::Lower(i, v, p) if *v >= lower[*i].0 => lower[*i] = (*v, Some(*p)),
                Atom::Upper(i, v, p) if *v <= upper[*i].0 => upper[*i] = (*v, Some(*p)),
                Atom::Lower(..) | Atom::Upper(..) => {}
                Atom::Output(sparse, rhs) if !sparse.is_empty() => {
                    let mut coeffs = vec![0.0; n_outputs];
                    for &(i, c) in sparse {
                        coeffs[i] += c;
                    }
                    constraints.push(LinearConstraint { coeffs, rhs: *rhs });
                }
                // A variable-free constraint that holds: nothing to add.
                Atom::Output(..) => {}
                Atom::False => feasible = false,
            }
        }
        if !feasible {
            continue;
        }
        let context = if several {
            format!(" in disjunct {}", t + 1)
        } else {
            String::new()
        };
        for i in 0..n_inputs {
            let decl = decls.inputs.get(&i).copied().unwrap_or_default();
            let (lo, lo_pos) = lower[i];
            let (hi, hi_pos) = upper[i];
            if lo_pos.is_none() || hi_pos.is_none() {
                let side = if lo_pos.is_none() { "lower" } else { "upper" };
                return err(
                    decl,
                    SpecErrorKind::MissingBound {
                        var: format!("X_{i}"),
                        side,
                        context,
                    },
                );
            }
            if lo > hi {
                // The later of the two bounds is the one that emptied the box.
                let at = lo_pos
                    .into_iter()
                    .chain(hi_pos)
                    .max_by_key(|p| (p.line, p.column))
                    .unwrap_or(decl);
                let e = LocatedError {
                    pos: at,
                    kind: SpecErrorKind::EmptyBox {
                        var: format!("X_{i}"),
                        lower: lo,
                        upper: hi,
                    },
                };
                if !several {
                    return Err(e);
                }
                empty_box = empty_box.or(Some(e));
                continue 'terms;
            }
        }
        let input = InputBox {
            lower: lower.iter().map(|b| b.0).collect(),
            upper: upper.iter().map(|b| b.0).collect(),
        };
        let key: Vec<u64> = input
            .lower
            .iter()
            .chain(&input.upper)
            .map(|v| v.to_bits())
            .collect();
        let conj = Conjunction { constraints };
        match case_of_box.get(&key) {
            Some(&c) => cases[c].unsafe_set.push(conj),
            None => {
                case_of_box.insert(key, cases.len());
                cases.push(Case {
                    input,
                    unsafe_set: vec![conj],
                });
            }
        }
    }
    if let (true, Some(e)) = (cases.is_empty(), empty_box) {
        return Err(e);
    }
    Ok(Property {
        n_inputs,
        n_outputs,
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Property, SpecError> {
        parse_str(text, Path::new("t.vnnlib"))
    }

    fn kind(text: &str) -> (SpecErrorKind, usize, usize) {
        match parse(text).unwrap_err() {
            SpecError::At {
                kind, line, column, ..
            } => (kind, line, column),
            e => panic!("unexpected {e}"),
        }
    }

    const DECL: &str = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n";

    #[test]
    fn reader_tracks_positions_and_comments() {
        let e = read_sexprs("; c (\n (a  b) ; x)\n(c)").unwrap();
        assert_eq!(e.len(), 2);
        let SExpr::List(items, pos) = &e[0] else {
            panic!()
        };
        assert_eq!(*pos, Pos { line: 2, column: 2 });
        assert_eq!(
            items[1],
            SExpr::Atom("b".into(), Pos { line: 2, column: 6 })
        );
        assert_eq!(
            read_sexprs("(a\n (b)").unwrap_err().kind,
            SpecErrorKind::UnclosedParen
        );
        let e = read_sexprs("(a)\n  )").unwrap_err();
        assert_eq!(
            (e.kind, e.pos),
            (
                SpecErrorKind::UnexpectedCloseParen,
                Pos { line: 2, column: 3 }
            )
        );
        let deep = "(".repeat(10_000);
        assert!(matches!(
            read_sexprs(&deep).unwrap_err().kind,
            SpecErrorKind::Syntax(_)
        ));
    }

    #[test]
    fn numbers_in_every_notation() {
        for (s, v) in [
            ("3", 3.0),
            ("-0.5", -0.5),
            ("1e-3", 1e-3),
            ("2.5E+2", 250.0),
            (".5", 0.5),
            ("+4", 4.0),
        ] {
            assert!(looks_numeric(s), "{s}");
            assert_eq!(parse_number(s, Pos::default()).unwrap(), v);
        }
        for s in ["1.2.3", "1e", "1e999", "3x", "--1"] {
            assert!(
                !looks_numeric(s) || parse_number(s, Pos::default()).is_err(),
                "{s}"
            );
        }
        assert!(!looks_numeric("-") && !looks_numeric("X_0"));
    }

    #[test]
    fn variable_names() {
        assert_eq!(parse_var("X_12"), Some(Var::X(12)));
        assert_eq!(parse_var("Y_0"), Some(Var::Y(0)));
        for bad in ["X_", "Z_1", "X_1a", "X", "x_1", "X_-1", "Ü"] {
            assert_eq!(parse_var(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_form_with_linear_terms() {
        let text = format!(
            "{DECL}(assert (<= X_0 0.6))(assert (>= X_0 -0.5))\n(assert (<= (* 2 X_1) 1))(assert (>= (- X_1) -1))\n\
             (assert (>= X_1 (- 0.25)))\n(assert (<= Y_0 Y_1))\n(assert (>= Y_1 0.5))\n(check-sat)"
        );
        let p = parse(&text).unwrap();
        assert_eq!((p.n_inputs, p.n_outputs, p.cases.len()), (2, 2, 1));
        let case = &p.cases[0];
        assert_eq!(case.input.lower, vec![-0.5, -0.25]);
        assert_eq!(case.input.upper, vec![0.6, 0.5]);
        assert_eq!(case.unsafe_set.len(), 1);
        let c = &case.unsafe_set[0].constraints;
        assert_eq!(
            c[0],
            LinearConstraint {
                coeffs: vec![1.0, -1.0],
                rhs: 0.0
            }
        );
        assert_eq!(
            c[1],
            LinearConstraint {
                coeffs: vec![0.0, -1.0],
                rhs: -0.5
            }
        );
        assert!(case.is_unsafe(&[0.0, 1.0]));
        assert!(!case.is_unsafe(&[2.0, 1.0]));
    }

    #[test]
    fn disjunctive_forms_group_by_box() {
        let text = format!(
            "{DECL}(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 1))\n\
             (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_1 2))\n\
             (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1) (<= Y_1 Y_0 3))))"
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.cases.len(), 2);
        assert_eq!(p.cases[0].unsafe_set.len(), 2);
        assert_eq!(p.cases[1].input.lower, vec![2.0, 0.0]);
        // Chained comparison: Y_1 <= Y_0 and Y_0 <= 3.
        assert_eq!(p.cases[1].unsafe_set[0].constraints.len(), 2);
        // Box bounds outside, disjunction of output constraints inside.
        let text = format!(
            "{DECL}(assert (>= X_0 0))(assert (<= X_0 1))(assert (= X_1 0.5))\n\
             (assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 0) (<= Y_1 0))))"
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.cases.len(), 1);
        assert_eq!(p.cases[0].input.lower, vec![0.0, 0.5]);
        assert_eq!(p.cases[0].input.upper, vec![1.0, 0.5]);
        assert_eq!(p.cases[0].unsafe_set.len(), 2);
    }

    #[test]
    fn each_error_kind_with_its_position() {
        let bounds =
            "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))\n";
        // (file text, the expected error kind, the line it must name)
        type Case = (String, fn(&SpecErrorKind) -> bool, usize);
        let cases: Vec<Case> = vec![
            (
                format!("{DECL}(assert (<= X_0 1)"),
                |k| *k == SpecErrorKind::UnclosedParen,
                5,
            ),
            (
                format!("{DECL}{bounds}(assert (<= Y_0 Z_0))"),
                |k| matches!(k, SpecErrorKind::UnknownVariable(v) if v == "Z_0"),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (<= Y_0 Y_7))"),
                |k| matches!(k, SpecErrorKind::UndeclaredVariable(v) if v == "Y_7"),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (<= Y_0 1.2.3))"),
                |k| matches!(k, SpecErrorKind::BadNumber(_)),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (<= (* Y_0 Y_1) 1))"),
                |k| matches!(k, SpecErrorKind::UnsupportedOperator { op, .. } if op == "*"),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (=> (<= Y_0 1) (<= Y_1 1)))"),
                |k| matches!(k, SpecErrorKind::UnsupportedOperator { op, .. } if op == "=>"),
                6,
            ),
            (
                format!("{DECL}(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))"),
                |k| matches!(k, SpecErrorKind::MissingBound { side: "upper", .. }),
                2,
            ),
            (
                format!("{DECL}{bounds}(assert (<= X_0 -1))"),
                |k| matches!(k, SpecErrorKind::EmptyBox { .. }),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (<= (+ X_0 X_1) 1))"),
                |k| matches!(k, SpecErrorKind::MultiVariableInput(_)),
                6,
            ),
            (
                format!("{DECL}{bounds}(assert (<= X_0 Y_1))"),
                |k| *k == SpecErrorKind::MixedConstraint,
                6,
            ),
            (
                format!("{DECL}(declare-const X_0 Real)"),
                |k| matches!(k, SpecErrorKind::DuplicateDeclaration(_)),
                5,
            ),
            (
                "(declare-const X_1 Real)(declare-const Y_0 Real)".into(),
                |k| matches!(k, SpecErrorKind::MissingDeclaration(v) if v == "X_0"),
                1,
            ),
            (
                "(declare-const X_0 Int)".into(),
                |k| matches!(k, SpecErrorKind::UnsupportedSort(_)),
                1,
            ),
            (
                format!("{DECL}(push 1)"),
                |k| matches!(k, SpecErrorKind::UnsupportedCommand(_)),
                5,
            ),
            (
                format!("{DECL}{bounds})"),
                |k| *k == SpecErrorKind::UnexpectedCloseParen,
                6,
            ),
            (
                "(declare-const Y_0 Real)".into(),
                |k| *k == SpecErrorKind::NoInputs,
                1,
            ),
            (String::new(), |k| *k == SpecErrorKind::NoInputs, 1),
        ];
        for (text, expected, line) in cases {
            let (k, l, _) = kind(&text);
            assert!(expected(&k), "{text}\n-> {k}");
            assert_eq!(l, line, "{text}\n-> {k}");
        }
        let msg = parse(&format!("{DECL}(assert (<= Y_0 Q))"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("t.vnnlib:5:17: unknown variable 'Q'"),
            "{msg}"
        );
    }

    #[test]
    fn false_disjuncts_are_dropped() {
        let text = format!(
            "{DECL}(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= 1 0)) \
             (and (>= X_0 0) (<= X_0 2) (>= X_1 0) (<= X_1 1) (<= Y_0 0))))"
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.cases.len(), 1);
        assert_eq!(p.cases[0].input.upper, vec![2.0, 1.0]);
    }

    #[test]
    fn disjuncts_with_an_empty_box_are_dropped_unless_none_is_left() {
        let empty = "(and (>= X_0 1) (<= X_0 0) (>= X_1 0) (<= X_1 1) (<= Y_0 0))";
        let text = format!(
            "{DECL}(assert (or {empty} \
             (and (>= X_0 0) (<= X_0 2) (>= X_1 0) (<= X_1 1) (<= Y_0 0))))"
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.cases.len(), 1);
        assert_eq!(p.cases[0].input.upper, vec![2.0, 1.0]);
        let text = format!("{DECL}(assert (or {empty} {empty}))");
        assert!(matches!(kind(&text).0, SpecErrorKind::EmptyBox { .. }));
    }
}
