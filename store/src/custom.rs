//! Custom offloaded operations: Rust functions over a stored value, registered by name when
//! the store starts and invoked by id.
//!
//! A custom operation must be deterministic (its result depends only on the value and the
//! argument): the write-ahead log re-executes it on recovery and the clock log assumes a
//! replayed operation would produce what was logged.

use crate::value::Value;
use bytes::Bytes;
use std::sync::Arc;

/// A custom operation: updates `value` in place given `arg`, returns the operation's result.
pub type CustomFn = fn(value: &mut Value, arg: &Value) -> Result<Value, String>;

/// Custom operations by id (the index of registration).
#[derive(Clone)]
pub struct CustomOps {
    ops: Arc<Vec<(String, CustomFn)>>,
}

impl Default for CustomOps {
    fn default() -> Self {
        Self::builtin()
    }
}

impl CustomOps {
    /// The built-in operations every store offers, in a fixed order.
    pub fn builtin() -> Self {
        let ops: Vec<(String, CustomFn)> = vec![
            ("max".into(), op_max),
            ("min".into(), op_min),
            ("set_if_absent".into(), op_set_if_absent),
            ("bit_or".into(), op_bit_or),
            ("list_remove".into(), op_list_remove),
            ("add_floor0".into(), op_add_floor0),
            ("argmin_incr".into(), op_argmin_incr),
            ("vec_add_floor0".into(), op_vec_add_floor0),
        ];
        CustomOps { ops: Arc::new(ops) }
    }

    /// The built-ins plus `extra`, in order. A name that is already taken is an error.
    pub fn with(extra: &[(&str, CustomFn)]) -> Result<Self, String> {
        let mut ops = (*Self::builtin().ops).clone();
        for (name, f) in extra {
            if ops.iter().any(|(n, _)| n == name) {
                return Err(format!("custom operation {name:?} registered twice"));
            }
            ops.push(((*name).to_string(), *f));
        }
        Ok(CustomOps { ops: Arc::new(ops) })
    }

    pub fn get(&self, id: u32) -> Option<CustomFn> {
        self.ops.get(id as usize).map(|(_, f)| *f)
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.ops
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32)
    }

    pub fn names(&self) -> Vec<String> {
        self.ops.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn int_of(v: &Value, what: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Nil => Ok(None),
        v => v
            .as_int()
            .map(Some)
            .ok_or_else(|| format!("{what} is not an integer")),
    }
}

/// Keeps the larger of the stored integer and the argument; returns the new value.
fn op_max(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let a = int_of(arg, "argument")?.ok_or("argument missing")?;
    let n = match int_of(v, "value")? {
        Some(c) => c.max(a),
        None => a,
    };
    *v = Value::Int(n);
    Ok(Value::Int(n))
}

/// Keeps the smaller of the stored integer and the argument; returns the new value.
fn op_min(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let a = int_of(arg, "argument")?.ok_or("argument missing")?;
    let n = match int_of(v, "value")? {
        Some(c) => c.min(a),
        None => a,
    };
    *v = Value::Int(n);
    Ok(Value::Int(n))
}

/// Stores the argument if nothing is stored; returns the value now stored.
fn op_set_if_absent(v: &mut Value, arg: &Value) -> Result<Value, String> {
    if v.is_nil() {
        *v = arg.clone();
    }
    Ok(v.clone())
}

/// ORs the argument's bits into the stored integer; returns the new value.
fn op_bit_or(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let a = int_of(arg, "argument")?.ok_or("argument missing")?;
    let n = int_of(v, "value")?.unwrap_or(0) | a;
    *v = Value::Int(n);
    Ok(Value::Int(n))
}

/// Removes every list item equal to the argument; returns how many were removed.
fn op_list_remove(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let Value::Bytes(item) = arg else {
        return Err("argument must be bytes".into());
    };
    match v {
        Value::Nil => Ok(Value::Int(0)),
        Value::List(l) => {
            let before = l.len();
            l.retain(|x| x != item);
            let removed = (before - l.len()) as i64;
            if l.is_empty() {
                *v = Value::Nil;
            }
            Ok(Value::Int(removed))
        }
        _ => Err("value is not a list".into()),
    }
}

/// Adds the argument to the stored integer and clamps at zero (a counter that cannot go
/// negative, e.g. active connections when a close is seen twice); returns the new value.
fn op_add_floor0(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let a = int_of(arg, "argument")?.ok_or("argument missing")?;
    let n = int_of(v, "value")?.unwrap_or(0).saturating_add(a).max(0);
    *v = Value::Int(n);
    Ok(Value::Int(n))
}

fn counters(v: &Value) -> Result<Vec<i64>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Bytes(b) if b.len() % 8 == 0 => Ok(b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        _ => Err("value is not a counter vector".into()),
    }
}

fn store_counters(v: &mut Value, c: &[i64]) {
    let mut b = Vec::with_capacity(c.len() * 8);
    for x in c {
        b.extend_from_slice(&x.to_le_bytes());
    }
    *v = Value::Bytes(Bytes::from(b));
}

/// A vector of counters (little-endian i64s): picks the smallest of the first `arg`
/// counters (lowest index on ties), increments it and returns its index. A load balancer's
/// "least active connections" choice as one offloaded operation.
fn op_argmin_incr(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let n = int_of(arg, "argument")?.ok_or("argument missing")?;
    if !(1..=65536).contains(&n) {
        return Err("argument must be between 1 and 65536".into());
    }
    let mut c = counters(v)?;
    if c.len() < n as usize {
        c.resize(n as usize, 0);
    }
    let (i, _) = c[..n as usize]
        .iter()
        .enumerate()
        .min_by_key(|(i, x)| (**x, *i))
        .expect("n >= 1");
    c[i] += 1;
    store_counters(v, &c);
    Ok(Value::Int(i as i64))
}

/// A vector of counters: adds `delta` to counter `idx` (argument: u32 LE index, i64 LE delta),
/// clamping at zero; returns the new value of that counter.
fn op_vec_add_floor0(v: &mut Value, arg: &Value) -> Result<Value, String> {
    let Value::Bytes(a) = arg else {
        return Err("argument must be 12 bytes".into());
    };
    if a.len() != 12 {
        return Err("argument must be 12 bytes".into());
    }
    let idx = u32::from_le_bytes(a[0..4].try_into().expect("4")) as usize;
    let delta = i64::from_le_bytes(a[4..12].try_into().expect("8"));
    if idx >= 65536 {
        return Err("index out of range".into());
    }
    let mut c = counters(v)?;
    if c.len() <= idx {
        c.resize(idx + 1, 0);
    }
    c[idx] = c[idx].saturating_add(delta).max(0);
    let r = c[idx];
    store_counters(v, &c);
    Ok(Value::Int(r))
}

/// The argument of `vec_add_floor0`.
pub fn vec_add_arg(idx: u32, delta: i64) -> Value {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&idx.to_le_bytes());
    b.extend_from_slice(&delta.to_le_bytes());
    Value::Bytes(Bytes::from(b))
}

/// Helper for callers building arguments.
pub fn bytes_arg(b: &[u8]) -> Value {
    Value::Bytes(Bytes::copy_from_slice(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_behave() {
        let c = CustomOps::builtin();
        let mut v = Value::Nil;
        let max = c.get(c.id("max").unwrap()).unwrap();
        assert_eq!(max(&mut v, &Value::Int(5)).unwrap(), Value::Int(5));
        assert_eq!(max(&mut v, &Value::Int(3)).unwrap(), Value::Int(5));
        let min = c.get(c.id("min").unwrap()).unwrap();
        assert_eq!(min(&mut v, &Value::Int(3)).unwrap(), Value::Int(3));
        let f = c.get(c.id("add_floor0").unwrap()).unwrap();
        assert_eq!(f(&mut v, &Value::Int(-10)).unwrap(), Value::Int(0));
        let mut l = Value::List(vec![bytes::Bytes::from_static(b"a")].into());
        let rm = c.get(c.id("list_remove").unwrap()).unwrap();
        assert_eq!(rm(&mut l, &bytes_arg(b"a")).unwrap(), Value::Int(1));
        assert!(l.is_nil());
        assert!(max(&mut Value::Bytes("x".into()), &Value::Int(1)).is_err());
    }

    #[test]
    fn counter_vectors() {
        let c = CustomOps::builtin();
        let pick = c.get(c.id("argmin_incr").unwrap()).unwrap();
        let add = c.get(c.id("vec_add_floor0").unwrap()).unwrap();
        let mut v = Value::Nil;
        let picks: Vec<_> = (0..5)
            .map(|_| pick(&mut v, &Value::Int(3)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1].map(Value::Int));
        assert_eq!(add(&mut v, &vec_add_arg(0, -5)).unwrap(), Value::Int(0));
        assert_eq!(pick(&mut v, &Value::Int(3)).unwrap(), Value::Int(0));
        assert!(pick(&mut v, &Value::Int(0)).is_err());
        assert!(add(&mut v, &Value::Int(1)).is_err());
    }

    #[test]
    fn duplicate_names_are_refused() {
        assert!(CustomOps::with(&[("max", op_max)]).is_err());
        let c = CustomOps::with(&[("mine", op_max)]).unwrap();
        assert_eq!(c.id("mine"), Some(c.names().len() as u32 - 1));
    }
}
