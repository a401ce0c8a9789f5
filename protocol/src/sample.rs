//! Arbitrary values of any wire type, drawn from a byte string.
//!
//! [`arbitrary`] runs a type's own `Deserialize` against a deserializer
//! that takes every choice — which enum variant, how many list items, which
//! bytes in a string, whether an option is set — from the input bytes, so
//! one generator covers every message type and every variant appended
//! later, with no per-type strategy to keep in step. Property tests feed it
//! random bytes (proptest) and the structure-aware fuzz target feeds it the
//! fuzzer's input.
//!
//! Invariants: the same bytes always give the same value; lists and maps
//! hold at most [`Shape::max_items`] items and strings at most
//! [`Shape::max_str`] bytes, and nesting stops at [`Shape::max_depth`]
//! (deeper lists are empty, deeper options `None`), so a value is small and
//! well within every message limit unless a shape asks otherwise; when the
//! input runs out every further choice is zero. Floats are finite, so
//! values compare equal to themselves. A type whose `Deserialize` refuses
//! what was drawn (a custom validation) gives `None`.
//!
//! Test-only code: compiled for the crate's tests and with the `sample`
//! feature (the fuzz crate), never into the controller or the agent.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// How large drawn values may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Most items in one list or map.
    pub max_items: usize,
    /// Most bytes in one string or byte string.
    pub max_str: usize,
    /// Deepest nesting of lists, maps and options.
    pub max_depth: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            max_items: 6,
            max_str: 24,
            max_depth: 6,
        }
    }
}

/// A value of `T` drawn from `data` with the default [`Shape`].
pub fn arbitrary<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    arbitrary_with(data, Shape::default())
}

/// A value of `T` drawn from `data` within `shape`.
pub fn arbitrary_with<T: DeserializeOwned>(data: &[u8], shape: Shape) -> Option<T> {
    arbitrary_widest(data, shape).map(|(value, _)| value)
}

/// A value of `T` drawn from `data` within `shape`, with the item count of
/// its longest list or map (0 when it has none).
pub fn arbitrary_widest<T: DeserializeOwned>(data: &[u8], shape: Shape) -> Option<(T, usize)> {
    let mut source = Source {
        data,
        shape,
        depth: 0,
        widest: 0,
    };
    let value = T::deserialize(&mut source).ok()?;
    Some((value, source.widest))
}

/// The remaining input and the limits.
struct Source<'a> {
    data: &'a [u8],
    shape: Shape,
    depth: usize,
    /// Most items drawn for one list or map so far.
    widest: usize,
}

impl Source<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }

    /// A number in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let n = u32::from_le_bytes(self.bytes::<4>()) as usize;
        n % (max + 1)
    }

    /// A length for a list or map: zero below the nesting limit.
    fn items(&mut self) -> usize {
        if self.depth >= self.shape.max_depth {
            return 0;
        }
        let n = self.upto(self.shape.max_items);
        self.widest = self.widest.max(n);
        n
    }

    fn text(&mut self) -> String {
        let len = self.upto(self.shape.max_str);
        let mut s = String::with_capacity(len);
        while s.len() < len {
            // Mostly printable ASCII, sometimes any scalar value.
            let b = self.byte();
            let c = if b < 0xF0 {
                char::from(0x20 + b % 0x5F)
            } else {
                char::from_u32(u32::from_le_bytes(self.bytes::<4>()) % 0x11_0000).unwrap_or('?')
            };
            s.push(c);
        }
        s
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }
}

type Error = de::value::Error;

impl<'de> de::Deserializer<'de> for &mut Source<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("self-describing types cannot be drawn"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(self.byte() & 1 == 1)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i8(i8::from_le_bytes(self.bytes()))
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i16(i16::from_le_bytes(self.bytes()))
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i32(i32::from_le_bytes(self.bytes()))
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(i64::from_le_bytes(self.bytes()))
    }
    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i128(i128::from_le_bytes(self.bytes()))
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(self.byte())
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u16(u16::from_le_bytes(self.bytes()))
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u32(u32::from_le_bytes(self.bytes()))
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(u64::from_le_bytes(self.bytes()))
    }
    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u128(u128::from_le_bytes(self.bytes()))
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let f = f32::from_le_bytes(self.bytes());
        v.visit_f32(if f.is_finite() { f } else { 0.0 })
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let f = f64::from_le_bytes(self.bytes());
        v.visit_f64(if f.is_finite() { f } else { 0.0 })
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = u32::from_le_bytes(self.bytes::<4>()) % 0x11_0000;
        v.visit_char(char::from_u32(n).unwrap_or('x'))
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.text())
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.text())
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_byte_buf(v)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let len = self.upto(self.shape.max_str);
        let bytes: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        v.visit_byte_buf(bytes)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if self.depth >= self.shape.max_depth || self.byte() & 1 == 0 {
            v.visit_none()
        } else {
            self.nested(|s| v.visit_some(s))
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let len = self.items();
        self.nested(|s| {
            v.visit_seq(Items {
                source: s,
                left: len,
            })
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Items {
            source: self,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let len = self.items();
        self.nested(|s| {
            v.visit_map(Items {
                source: s,
                left: len,
            })
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), v)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let index = self.upto(variants.len().saturating_sub(1));
        v.visit_enum(Variant {
            source: self,
            index: index as u32,
        })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_u32(v)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn is_human_readable(&self) -> bool {
        // As postcard: timestamps are integers, not RFC 3339 text.
        false
    }
}

/// The items of a list, map, tuple or struct still to draw.
struct Items<'s, 'a> {
    source: &'s mut Source<'a>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.source).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> MapAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.source).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.source)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An enum whose variant index has been drawn.
struct Variant<'s, 'a> {
    source: &'s mut Source<'a>,
    index: u32,
}

impl<'de, 's, 'a> EnumAccess<'de> for Variant<'s, 'a> {
    type Error = Error;
    type Variant = &'s mut Source<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let index: de::value::U32Deserializer<Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self.source))
    }
}

impl<'de> VariantAccess<'de> for &mut Source<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, Response};

    #[test]
    fn same_bytes_same_value_and_every_variant_reachable() {
        let names = crate::limits::request_variants();
        let mut seen = vec![false; names.len()];
        for first in 0..=u8::MAX {
            let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(first)).collect();
            let mut input = vec![first, 0, 0, 0];
            input.extend_from_slice(&data);
            let a: Request = arbitrary(&input).unwrap();
            let b: Request = arbitrary(&input).unwrap();
            assert_eq!(a, b);
            let tag = postcard::to_stdvec(&a).unwrap()[0] as usize;
            seen[tag.min(names.len() - 1)] = true;
            let _: Response = arbitrary(&input).unwrap();
        }
        // The first four bytes pick the variant: every one below 256 is hit.
        let reachable = names.len().min(256);
        assert!(seen[..reachable].iter().all(|s| *s), "{seen:?}");
    }

    #[test]
    fn empty_input_gives_the_first_variant_with_empty_fields() {
        let r: Request = arbitrary(&[]).unwrap();
        match r {
            Request::IssuerAdd { name, .. } => assert_eq!(name, ""),
            other => panic!("{other:?}"),
        }
    }
}
