//! Python's `str(tuple(...))`, which SALMON writes into its `dimensions`,
//! `negative_definitions` and `dimension_scores` fields: the same text here, so that a reader
//! of SALMON's JSON reads ours.

use crate::kit::pystr::py_repr;

/// Python's `repr` of a float: the shortest text that reads back the same, positional for
/// exponents from -4 to 15 (always with a `.`), else `1.5e-05`, `1e+16`.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if x == 0.0 || (-4..16).contains(&exp) {
        let plain = format!("{x}");
        return if plain.contains('.') { plain } else { format!("{plain}.0") };
    }
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// Python's `str(tuple(items))` of items already in their `repr`: `()`, `(x,)`, `(x, y)`.
pub fn py_tuple(items: &[String]) -> String {
    match items {
        [one] => format!("({one},)"),
        _ => format!("({})", items.join(", ")),
    }
}

/// `str(tuple(strings))`.
pub fn py_str_tuple<S: AsRef<str>>(items: &[S]) -> String {
    py_tuple(&items.iter().map(|s| py_repr(s.as_ref())).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_tuples_read_as_python_writes_them() {
        // Each right-hand side is what CPython 3 prints for repr(x).
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(-0.75), "-0.75");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(-0.0), "-0.0");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(0.000015), "1.5e-05");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(123456789012345.6), "123456789012345.6");
        assert_eq!(py_float(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(py_tuple(&[]), "()");
        assert_eq!(py_tuple(&["1".into()]), "(1,)");
        assert_eq!(py_str_tuple(&["Concise", "Honest and Accurate"]), "('Concise', 'Honest and Accurate')");
        assert_eq!(py_str_tuple(&["It's"]), "(\"It's\",)");
    }
}
