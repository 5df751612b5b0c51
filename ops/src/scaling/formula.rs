//! Scaling-law formulas: a small expression language parsed once and evaluated two ways, on
//! burn tensors (batched over many parameter vectors, differentiated by burn's autodiff) and on
//! plain `f64` (predictions, plots, allocation).
//!
//! Grammar: numbers, names (data columns or fitted parameters), `+ - * / ^`, unary minus,
//! parentheses, and the functions `exp`, `log`, `sqrt` and `lse` (log-sum-exp of one or more
//! arguments). `^` binds tightest and is right-associative; `-x^2` is `-(x^2)`.

use std::collections::BTreeSet;
use std::fmt;

use burn::tensor::{Tensor, TensorCreationOptions};

/// A parsed formula.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(f64),
    /// A column or a parameter, resolved when the formula is bound.
    Name(String),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Exp,
    Log,
    Sqrt,
    Lse,
}

impl Func {
    const ALL: [(&'static str, Func); 4] =
        [("exp", Func::Exp), ("log", Func::Log), ("sqrt", Func::Sqrt), ("lse", Func::Lse)];

    fn name(self) -> &'static str {
        Func::ALL.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// A syntax error, with the 1-based character column where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at column {})", self.message, self.column)
    }
}

impl std::error::Error for ParseError {}

/// Parses a formula such as `E + A / N^alpha + B / D^beta`.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser { chars: text.chars().collect(), pos: 0 };
    let expr = p.expr()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.error(format!("unexpected `{}`", p.chars[p.pos])));
    }
    Ok(expr)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { column: self.pos + 1, message: message.into() }
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek() {
                Some('+') => BinOp::Add,
                Some('-') => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Some('*') => BinOp::Mul,
                Some('/') => BinOp::Div,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat('-') {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr, ParseError> {
        let base = self.atom()?;
        if self.eat('^') {
            // Right-associative, and the exponent may carry its own sign: `N^-0.5`.
            let exponent = self.unary()?;
            return Ok(Expr::Bin(BinOp::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            None => Err(self.error("the formula ends where a value was expected")),
            Some('(') => {
                self.pos += 1;
                let inner = self.expr()?;
                if !self.eat(')') {
                    return Err(self.error("expected `)`"));
                }
                Ok(inner)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                let start = self.pos;
                while self.chars.get(self.pos).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                if self.peek() != Some('(') {
                    return Ok(Expr::Name(name));
                }
                let Some(func) = Func::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f) else {
                    self.pos = start;
                    let known: Vec<&str> = Func::ALL.iter().map(|(n, _)| *n).collect();
                    return Err(self.error(format!("unknown function `{name}` (known: {})", known.join(", "))));
                };
                self.pos += 1;
                let mut args = vec![self.expr()?];
                while self.eat(',') {
                    args.push(self.expr()?);
                }
                if !self.eat(')') {
                    return Err(self.error("expected `,` or `)`"));
                }
                if func != Func::Lse && args.len() != 1 {
                    self.pos = start;
                    return Err(self.error(format!("`{name}` takes one argument, got {}", args.len())));
                }
                Ok(Expr::Call(func, args))
            }
            Some(c) => Err(self.error(format!("unexpected `{c}`"))),
        }
    }

    fn number(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        let at = |p: &Parser, i: usize| p.chars.get(i).copied();
        while at(self, self.pos).is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        if matches!(at(self, self.pos), Some('e' | 'E')) {
            let mut look = self.pos + 1;
            if matches!(at(self, look), Some('+' | '-')) {
                look += 1;
            }
            if at(self, look).is_some_and(|c| c.is_ascii_digit()) {
                self.pos = look;
                while at(self, self.pos).is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse::<f64>()
            .map(Expr::Num)
            .map_err(|_| ParseError { column: start + 1, message: format!("`{text}` is not a number") })
    }
}

impl Expr {
    /// Every name the formula mentions, in order of first appearance.
    pub fn names(&self) -> Vec<String> {
        fn walk(e: &Expr, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            match e {
                Expr::Num(_) => {}
                Expr::Name(n) => {
                    if seen.insert(n.clone()) {
                        out.push(n.clone());
                    }
                }
                Expr::Neg(x) => walk(x, seen, out),
                Expr::Bin(_, a, b) => {
                    walk(a, seen, out);
                    walk(b, seen, out);
                }
                Expr::Call(_, args) => args.iter().for_each(|a| walk(a, seen, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut BTreeSet::new(), &mut out);
        out
    }

    /// `log(self)`.
    pub fn log(self) -> Expr {
        Expr::Call(Func::Log, vec![self])
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(v) => write!(f, "{v}"),
            Expr::Name(n) => write!(f, "{n}"),
            Expr::Neg(x) => write!(f, "-({x})"),
            Expr::Bin(op, a, b) => {
                let sym = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Pow => "^",
                };
                write!(f, "({a} {sym} {b})")
            }
            Expr::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// A formula whose names are resolved to parameter or column slots.
#[derive(Clone, Debug)]
pub enum Bound {
    Num(f64),
    Param(usize),
    Column(usize),
    Neg(Box<Bound>),
    Bin(BinOp, Box<Bound>, Box<Bound>),
    Call(Func, Vec<Bound>),
}

impl Expr {
    /// Resolves each name to a parameter (by position in `params`) or a column (in `columns`).
    /// A name that is neither is an error naming it.
    pub fn bind(&self, params: &[String], columns: &[String]) -> Result<Bound, String> {
        Ok(match self {
            Expr::Num(v) => Bound::Num(*v),
            Expr::Name(n) => {
                if let Some(i) = params.iter().position(|p| p == n) {
                    Bound::Param(i)
                } else if let Some(i) = columns.iter().position(|c| c == n) {
                    Bound::Column(i)
                } else {
                    return Err(format!("`{n}` is neither a parameter nor a column"));
                }
            }
            Expr::Neg(x) => Bound::Neg(Box::new(x.bind(params, columns)?)),
            Expr::Bin(op, a, b) => {
                Bound::Bin(*op, Box::new(a.bind(params, columns)?), Box::new(b.bind(params, columns)?))
            }
            Expr::Call(f, args) => {
                Bound::Call(*f, args.iter().map(|a| a.bind(params, columns)).collect::<Result<_, _>>()?)
            }
        })
    }
}

impl Bound {
    /// Evaluates at one point: `params` are the parameter values, `row` the column values.
    pub fn eval(&self, params: &[f64], row: &[f64]) -> f64 {
        match self {
            Bound::Num(v) => *v,
            Bound::Param(i) => params[*i],
            Bound::Column(i) => row[*i],
            Bound::Neg(x) => -x.eval(params, row),
            Bound::Bin(op, a, b) => {
                let (a, b) = (a.eval(params, row), b.eval(params, row));
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Pow => a.powf(b),
                }
            }
            Bound::Call(f, args) => {
                let vals: Vec<f64> = args.iter().map(|a| a.eval(params, row)).collect();
                match f {
                    Func::Exp => vals[0].exp(),
                    Func::Log => vals[0].ln(),
                    Func::Sqrt => vals[0].sqrt(),
                    Func::Lse => {
                        let m = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if !m.is_finite() {
                            return m;
                        }
                        m + vals.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                    }
                }
            }
        }
    }

    /// Evaluates for a batch: `params` is `[S, P]` (one parameter vector per row), each column
    /// `[1, n]`; the result broadcasts to `[S, n]`, or stays smaller where the formula allows.
    /// Sub-expressions over columns alone are computed once on `[1, n]`.
    pub fn eval_tensor(&self, params: &Tensor<2>, columns: &[Tensor<2>]) -> Value {
        match self {
            Bound::Num(v) => Value::Scalar(*v),
            Bound::Param(i) => {
                let s = params.dims()[0];
                Value::Tensor(params.clone().slice([0..s, *i..*i + 1]))
            }
            Bound::Column(i) => Value::Tensor(columns[*i].clone()),
            Bound::Neg(x) => match x.eval_tensor(params, columns) {
                Value::Scalar(v) => Value::Scalar(-v),
                Value::Tensor(t) => Value::Tensor(t.neg()),
            },
            Bound::Bin(op, a, b) => binary(*op, a.eval_tensor(params, columns), b.eval_tensor(params, columns)),
            Bound::Call(f, args) => {
                let mut vals: Vec<Value> = args.iter().map(|a| a.eval_tensor(params, columns)).collect();
                match f {
                    Func::Lse => lse(vals),
                    _ => match vals.pop().expect("one argument, checked by the parser") {
                        Value::Scalar(v) => Value::Scalar(match f {
                            Func::Exp => v.exp(),
                            Func::Log => v.ln(),
                            _ => v.sqrt(),
                        }),
                        Value::Tensor(t) => Value::Tensor(match f {
                            Func::Exp => t.exp(),
                            Func::Log => t.log(),
                            _ => t.sqrt(),
                        }),
                    },
                }
            }
        }
    }
}

/// A scalar constant or a tensor, so that constants fold and never become tensors.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // short-lived values of one evaluation; boxing buys nothing
pub enum Value {
    Scalar(f64),
    Tensor(Tensor<2>),
}

impl Value {
    /// As a tensor broadcastable against `[S, n]`.
    pub fn into_tensor(self, like: &Tensor<2>) -> Tensor<2> {
        match self {
            Value::Scalar(v) => {
                Tensor::<2>::full([1, 1], v, TensorCreationOptions::new(like.device()).with_dtype(like.dtype()))
            }
            Value::Tensor(t) => t,
        }
    }
}

fn binary(op: BinOp, a: Value, b: Value) -> Value {
    use Value::{Scalar as S, Tensor as T};
    match (op, a, b) {
        (op, S(a), S(b)) => S(match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Pow => a.powf(b),
        }),
        (BinOp::Add, T(a), S(b)) | (BinOp::Add, S(b), T(a)) => T(a.add_scalar(b)),
        (BinOp::Sub, T(a), S(b)) => T(a.sub_scalar(b)),
        (BinOp::Sub, S(a), T(b)) => T(b.neg().add_scalar(a)),
        (BinOp::Mul, T(a), S(b)) | (BinOp::Mul, S(b), T(a)) => T(a.mul_scalar(b)),
        (BinOp::Div, T(a), S(b)) => T(a.div_scalar(b)),
        (BinOp::Div, S(a), T(b)) => T(b.recip().mul_scalar(a)),
        (BinOp::Pow, T(a), S(b)) => T(a.powf_scalar(b)),
        // a^b = exp(b log a): defined for a > 0, as in every scaling law; NaN otherwise.
        (BinOp::Pow, S(a), T(b)) => T(b.mul_scalar(a.ln()).exp()),
        (BinOp::Pow, T(a), T(b)) => T(a.log().mul(b).exp()),
        (BinOp::Add, T(a), T(b)) => T(a.add(b)),
        (BinOp::Sub, T(a), T(b)) => T(a.sub(b)),
        (BinOp::Mul, T(a), T(b)) => T(a.mul(b)),
        (BinOp::Div, T(a), T(b)) => T(a.div(b)),
    }
}

/// log(sum(exp(x_i))), shifted by the element-wise maximum so that nothing overflows. The shift
/// is detached: the value's derivative with respect to it is zero.
fn lse(vals: Vec<Value>) -> Value {
    let (scalars, tensors): (Vec<_>, Vec<_>) = vals.into_iter().partition(|v| matches!(v, Value::Scalar(_)));
    let scalars: Vec<f64> = scalars.into_iter().map(|v| if let Value::Scalar(s) = v { s } else { 0.0 }).collect();
    let tensors: Vec<Tensor<2>> =
        tensors.into_iter().filter_map(|v| if let Value::Tensor(t) = v { Some(t) } else { None }).collect();
    if tensors.is_empty() {
        let m = scalars.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        return Value::Scalar(m + scalars.iter().map(|v| (v - m).exp()).sum::<f64>().ln());
    }
    // The broadcast shape of all terms, so that the element-wise maximum sees equal shapes.
    let shape = tensors.iter().fold([1, 1], |acc, t| {
        let d = t.dims();
        [acc[0].max(d[0]), acc[1].max(d[1])]
    });
    let mut m = tensors[0].clone().detach().expand(shape);
    for t in &tensors[1..] {
        m = m.max_pair(t.clone().detach().expand(shape));
    }
    for &s in &scalars {
        m = m.clamp_min(s);
    }
    let mut sum: Option<Tensor<2>> = None;
    for t in tensors {
        let e = t.sub(m.clone()).exp();
        sum = Some(match sum {
            Some(acc) => acc.add(e),
            None => e,
        });
    }
    let mut sum = sum.expect("at least one tensor");
    for s in scalars {
        sum = sum.add(m.clone().neg().add_scalar(s).exp());
    }
    Value::Tensor(sum.log().add(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse(text).unwrap().names()
    }

    #[test]
    fn parses_the_chinchilla_law_with_usual_precedence() {
        let e = parse("E + A / N^alpha + B / D^beta").unwrap();
        assert_eq!(e.to_string(), "((E + (A / (N ^ alpha))) + (B / (D ^ beta)))");
        assert_eq!(names("E + A / N^alpha + B / D^beta"), ["E", "A", "N", "alpha", "B", "D", "beta"]);
    }

    #[test]
    fn power_is_right_associative_and_binds_tighter_than_unary_minus() {
        assert_eq!(parse("2^3^2").unwrap().to_string(), "(2 ^ (3 ^ 2))");
        assert_eq!(parse("-x^2").unwrap().to_string(), "-((x ^ 2))");
        assert_eq!(parse("N^-0.5").unwrap().to_string(), "(N ^ -(0.5))");
        let b = parse("-2^2").unwrap().bind(&[], &[]).unwrap();
        assert_eq!(b.eval(&[], &[]), -4.0);
    }

    #[test]
    fn numbers_with_exponents_and_functions() {
        let e = parse("1.5e3 + exp(0) + log(1) + sqrt(4) + lse(0, 0)").unwrap();
        let v = e.bind(&[], &[]).unwrap().eval(&[], &[]);
        assert!((v - (1500.0 + 1.0 + 0.0 + 2.0 + 2f64.ln())).abs() < 1e-12, "{v}");
        // `e` after a number is only an exponent when digits follow.
        assert_eq!(parse("2*e").unwrap().names(), ["e"]);
    }

    #[test]
    fn syntax_errors_say_where() {
        let cases = [
            ("E + ", 5, "the formula ends where a value was expected"),
            ("(E + A", 7, "expected `)`"),
            ("E + A)", 6, "unexpected `)`"),
            ("E + foo(N)", 5, "unknown function `foo` (known: exp, log, sqrt, lse)"),
            ("exp(a, b)", 1, "`exp` takes one argument, got 2"),
            ("E $ A", 3, "unexpected `$`"),
            ("1.2.3", 1, "`1.2.3` is not a number"),
        ];
        for (text, column, message) in cases {
            assert_eq!(parse(text), Err(ParseError { column, message: message.into() }), "{text}");
        }
    }

    #[test]
    fn binding_names_an_unknown_name() {
        let e = parse("E + A / N^alpha").unwrap();
        let err = e.bind(&["E".into(), "A".into()], &["N".into()]).unwrap_err();
        assert_eq!(err, "`alpha` is neither a parameter nor a column");
    }

    #[test]
    fn lse_matches_the_expanded_form() {
        let p = ["a".to_string(), "b".into(), "e".into(), "alpha".into(), "beta".into()];
        let c = ["N".to_string(), "D".into()];
        let lse = parse("lse(a - alpha*log(N), b - beta*log(D), e)").unwrap().bind(&p, &c).unwrap();
        let direct = parse("log(exp(e) + exp(a)/N^alpha + exp(b)/D^beta)").unwrap().bind(&p, &c).unwrap();
        let params = [6.2, 7.7, 0.6, 0.35, 0.37];
        let row = [1e9, 2e10];
        let (x, y) = (lse.eval(&params, &row), direct.eval(&params, &row));
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
}
