//! Decoding with a bounded cost.
//!
//! Postcard prefixes every list and map with its length, and serde's `Vec`
//! pushes one element per item the peer claims: a 4 MiB body holding four
//! million empty strings decodes into 96 MiB of `String` headers (and twice
//! that while the vector grows). [`decode_body`] wraps the postcard
//! deserializer so that, while it decodes:
//!
//! - no list or map holds more than [`DecodeLimits::max_items`] items; a
//!   length prefix above the limit is refused before the list is allocated;
//! - the heap the decoded value takes is charged against
//!   [`DecodeLimits::max_heap`]: `2 × size_of` of every list or map item
//!   (a growing `Vec` holds up to twice its length) and the length of every
//!   string and byte string. Fields of structs, tuples and enum variants are
//!   inline, not heap, and are not charged.
//!
//! The first limit broken is reported as [`FrameError::Limit`] with what
//! broke it; the generic postcard error carries no text.

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::frame::FrameError;

/// What one decoded message may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most items in any one list or map.
    pub max_items: usize,
    /// Most heap bytes the decoded message may take (estimated as above).
    pub max_heap: usize,
}

impl DecodeLimits {
    /// Limits that a message of `max_bytes` can never reach without a
    /// blow-up: strings cost what they weigh on the wire, lists `16 ×`.
    pub const fn for_frame(max_bytes: usize, max_items: usize) -> Self {
        DecodeLimits {
            max_items,
            max_heap: max_bytes.saturating_mul(16),
        }
    }
}

/// Decode one message from a frame body within `limits`, rejecting
/// trailing bytes.
pub fn decode_body<T: DeserializeOwned>(
    body: &[u8],
    limits: DecodeLimits,
) -> Result<T, FrameError> {
    let meter = Meter {
        limits,
        heap: Cell::new(0),
        broken: RefCell::new(None),
    };
    let mut de = postcard::Deserializer::from_bytes(body);
    let result = T::deserialize(Bounded {
        inner: &mut de,
        meter: &meter,
        shape: Shape::Collection,
    });
    match result {
        Ok(value) => {
            let rest = de.finalize().map_err(FrameError::Malformed)?;
            if !rest.is_empty() {
                return Err(FrameError::TrailingBytes(rest.len()));
            }
            Ok(value)
        }
        Err(e) => Err(match meter.broken.into_inner() {
            Some(what) => FrameError::Limit(what),
            None => FrameError::Malformed(e),
        }),
    }
}

/// The running totals of one decode.
struct Meter {
    limits: DecodeLimits,
    heap: Cell<usize>,
    /// The first limit broken, in words.
    broken: RefCell<Option<String>>,
}

impl Meter {
    fn refuse<E: de::Error>(&self, what: String) -> E {
        let mut broken = self.broken.borrow_mut();
        if broken.is_none() {
            *broken = Some(what);
        }
        E::custom("decode limit exceeded")
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let total = self.heap.get().saturating_add(bytes);
        if total > self.limits.max_heap {
            return Err(self.refuse(format!(
                "the message would take more than {} bytes of memory once decoded",
                self.limits.max_heap
            )));
        }
        self.heap.set(total);
        Ok(())
    }

    fn check_len<E: de::Error>(&self, len: Option<usize>) -> Result<(), E> {
        match len {
            Some(n) if n > self.limits.max_items => Err(self.too_many(n)),
            _ => Ok(()),
        }
    }

    fn too_many<E: de::Error>(&self, n: usize) -> E {
        self.refuse(format!(
            "a list of {n} items exceeds the limit (at most {} are accepted)",
            self.limits.max_items
        ))
    }
}

/// Whether the next `visit_seq` / `visit_map` is a collection (counted and
/// charged) or the fields of a struct, tuple or variant (inline).
#[derive(Clone, Copy)]
enum Shape {
    Collection,
    Fixed,
}

/// A deserializer that passes every visitor through [`Wrap`].
struct Bounded<'m, D> {
    inner: D,
    meter: &'m Meter,
    shape: Shape,
}

impl<'m, D> Bounded<'m, D> {
    fn wrap<V>(&self, visitor: V, shape: Shape) -> Wrap<'m, V> {
        Wrap {
            inner: visitor,
            meter: self.meter,
            shape,
        }
    }
}

macro_rules! forward {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let v = self.wrap(visitor, self.shape);
            self.inner.$method(v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Collection);
        self.inner.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Collection);
        self.inner.deserialize_map(v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Fixed);
        self.inner.deserialize_tuple(len, v)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Fixed);
        self.inner.deserialize_unit_struct(name, v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Collection);
        self.inner.deserialize_newtype_struct(name, v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Fixed);
        self.inner.deserialize_tuple_struct(name, len, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Fixed);
        self.inner.deserialize_struct(name, fields, v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.wrap(visitor, Shape::Fixed);
        self.inner.deserialize_enum(name, variants, v)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor that charges what it is handed before passing it on.
struct Wrap<'m, V> {
    inner: V,
    meter: &'m Meter,
    shape: Shape,
}

macro_rules! visit_plain {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_plain!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
    );

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.meter.charge(v.len())?;
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Bounded {
            inner: d,
            meter: self.meter,
            shape: Shape::Collection,
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            meter: self.meter,
            shape: Shape::Collection,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if let Shape::Collection = self.shape {
            // Postcard's hint is the claimed length whenever the body still
            // holds that many bytes: refuse before the list is allocated.
            self.meter.check_len(seq.size_hint())?;
        }
        self.inner.visit_seq(Items {
            inner: seq,
            meter: self.meter,
            shape: self.shape,
            count: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        if let Shape::Collection = self.shape {
            self.meter.check_len(map.size_hint())?;
        }
        self.inner.visit_map(Items {
            inner: map,
            meter: self.meter,
            shape: self.shape,
            count: 0,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Items {
            inner: data,
            meter: self.meter,
            shape: Shape::Fixed,
            count: 0,
        })
    }
}

/// A list, map or enum whose items are counted, charged and decoded
/// through [`Bounded`].
struct Items<'m, A> {
    inner: A,
    meter: &'m Meter,
    shape: Shape,
    count: usize,
}

impl<'m, A> Items<'m, A> {
    fn admit<E: de::Error>(&mut self, item_size: usize) -> Result<(), E> {
        if let Shape::Collection = self.shape {
            self.count += 1;
            if self.count > self.meter.limits.max_items {
                return Err(self.meter.too_many(self.count));
            }
            self.meter.charge(item_size.saturating_mul(2))?;
        }
        Ok(())
    }

    fn seed<S>(&self, seed: S) -> Seed<'m, S> {
        Seed {
            inner: seed,
            meter: self.meter,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Items<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        // Charged before the item is decoded: the item is pushed only if it
        // decodes, but a refused message is dropped whole anyway.
        if self.inner.size_hint() == Some(0) {
            return Ok(None);
        }
        self.admit(size_of::<T::Value>())?;
        let seed = Seed {
            inner: seed,
            meter: self.meter,
        };
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|n| n.min(self.meter.limits.max_items))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Items<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.inner.size_hint() == Some(0) {
            return Ok(None);
        }
        self.admit(size_of::<K::Value>())?;
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if let Shape::Collection = self.shape {
            self.meter.charge(size_of::<V::Value>().saturating_mul(2))?;
        }
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|n| n.min(self.meter.limits.max_items))
    }
}

impl<'de, 'm, A: EnumAccess<'de>> EnumAccess<'de> for Items<'m, A> {
    type Error = A::Error;
    type Variant = Items<'m, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let meter = self.meter;
        let (value, variant) = self.inner.variant_seed(Seed { inner: seed, meter })?;
        Ok((
            value,
            Items {
                inner: variant,
                meter,
                shape: Shape::Fixed,
                count: 0,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Items<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = Seed {
            inner: seed,
            meter: self.meter,
        };
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let v = Wrap {
            inner: visitor,
            meter: self.meter,
            shape: Shape::Fixed,
        };
        self.inner.tuple_variant(len, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let v = Wrap {
            inner: visitor,
            meter: self.meter,
            shape: Shape::Fixed,
        };
        self.inner.struct_variant(fields, v)
    }
}

/// A seed whose deserializer is wrapped in [`Bounded`].
struct Seed<'m, S> {
    inner: S,
    meter: &'m Meter,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            meter: self.meter,
            shape: Shape::Collection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{InventoryReport, Request};
    use serde::{Deserialize, Serialize};

    const LIMITS: DecodeLimits = DecodeLimits {
        max_items: 100,
        max_heap: 64 * 1024,
    };

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        name: String,
        items: Vec<String>,
        pairs: Vec<(String, u32)>,
        nested: Option<Vec<Vec<u8>>>,
    }

    fn msg(n: usize) -> Msg {
        Msg {
            name: "x".into(),
            items: vec!["a".into(); n],
            pairs: vec![("k".into(), 1)],
            nested: Some(vec![vec![1, 2, 3]]),
        }
    }

    #[test]
    fn messages_within_limits_decode_as_postcard_does() {
        let m = msg(100);
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(decode_body::<Msg>(&bytes, LIMITS).unwrap(), m);
        let r = Request::CertApply {
            instance: "i".into(),
            domains: vec!["a.example".into(), "b.example".into()],
        };
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert_eq!(decode_body::<Request>(&bytes, LIMITS).unwrap(), r);
    }

    #[test]
    fn a_long_list_is_refused_by_its_length_prefix() {
        let bytes = postcard::to_stdvec(&msg(101)).unwrap();
        let err = decode_body::<Msg>(&bytes, LIMITS).unwrap_err();
        assert!(
            err.to_string()
                .contains("a list of 101 items exceeds the limit (at most 100 are accepted)"),
            "{err}"
        );
    }

    #[test]
    fn four_million_empty_domains_are_refused_before_allocation() {
        // The attack of issue 14: a 4 MiB CertApply of empty strings.
        let mut body = postcard::to_stdvec(&Request::CertApply {
            instance: "i".into(),
            domains: vec![],
        })
        .unwrap();
        body.pop(); // the empty list's length
        let n: u32 = 4_000_000;
        let mut v = n;
        while v >= 0x80 {
            body.push((v as u8) | 0x80);
            v >>= 7;
        }
        body.push(v as u8);
        body.resize(body.len() + n as usize, 0);
        let limits = DecodeLimits {
            max_items: 10_000,
            max_heap: 1 << 20,
        };
        let err = decode_body::<Request>(&body, limits).unwrap_err();
        assert!(
            matches!(&err, FrameError::Limit(w) if w.contains("4000000 items")),
            "{err}"
        );
    }

    #[test]
    fn heap_is_charged_for_items_and_strings() {
        let m = Msg {
            name: "n".repeat(1000),
            items: vec![],
            pairs: vec![],
            nested: None,
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        let tight = DecodeLimits {
            max_items: 100,
            max_heap: 999,
        };
        assert!(matches!(
            decode_body::<Msg>(&bytes, tight),
            Err(FrameError::Limit(_))
        ));
        // 100 empty strings: 100 × 2 × 24 bytes of `String`.
        let bytes = postcard::to_stdvec(&msg(100)).unwrap();
        let tight = DecodeLimits {
            max_items: 100,
            max_heap: 4000,
        };
        let err = decode_body::<Msg>(&bytes, tight).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn struct_fields_are_not_items() {
        // An inventory report's entries have more fields than max_items.
        let report = InventoryReport {
            scanned_at: crate::message::Timestamp(1),
            entries: vec![],
            problems: vec!["p".into()],
        };
        let bytes = postcard::to_stdvec(&report).unwrap();
        let limits = DecodeLimits {
            max_items: 1,
            max_heap: 1024,
        };
        assert_eq!(
            decode_body::<InventoryReport>(&bytes, limits).unwrap(),
            report
        );
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let mut bytes = postcard::to_stdvec(&msg(3)).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode_body::<Msg>(&bytes, LIMITS),
            Err(FrameError::TrailingBytes(1))
        ));
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_body::<Request>(&bytes, LIMITS);
        }
    }
}
