//! The JSON value `netvmm compare --json` writes (see `json`), and, for tests, a reader.
//! Self-contained: tests/compare_lab.rs includes this file to read netvmm's output back.

/// A JSON value. Object keys keep their order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// A small strict JSON reader, for the tests to read back what the writer wrote (the unit
/// tests of `json`, and tests/compare_lab.rs, which includes this file).
#[cfg(test)]
pub mod read {
    use super::Json;

    pub fn parse(s: &str) -> Result<Json, String> {
        let mut p = Parser {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && b" \t\r\n".contains(&self.b[self.i]) {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", c as char, self.i))
            }
        }
        fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
            if self.b[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                Ok(v)
            } else {
                Err(format!("bad literal at {}", self.i))
            }
        }
        /// The comma-separated items of an array or object, from its opening bracket (at
        /// the cursor) through `close`.
        fn items(
            &mut self,
            close: u8,
            what: &str,
            mut item: impl FnMut(&mut Self) -> Result<(), String>,
        ) -> Result<(), String> {
            self.i += 1;
            self.ws();
            if self.b.get(self.i) == Some(&close) {
                self.i += 1;
                return Ok(());
            }
            loop {
                item(self)?;
                self.ws();
                match self.b.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(&c) if c == close => {
                        self.i += 1;
                        return Ok(());
                    }
                    _ => return Err(format!("bad {what} at {}", self.i)),
                }
            }
        }
        fn value(&mut self) -> Result<Json, String> {
            self.ws();
            match self.b.get(self.i) {
                Some(b'n') => self.lit("null", Json::Null),
                Some(b't') => self.lit("true", Json::Bool(true)),
                Some(b'f') => self.lit("false", Json::Bool(false)),
                Some(b'"') => self.string().map(Json::Str),
                Some(b'[') => {
                    let mut v = Vec::new();
                    self.items(b']', "array", |p| {
                        v.push(p.value()?);
                        Ok(())
                    })?;
                    Ok(Json::Arr(v))
                }
                Some(b'{') => {
                    let mut v = Vec::new();
                    self.items(b'}', "object", |p| {
                        p.ws();
                        let k = p.string()?;
                        p.eat(b':')?;
                        v.push((k, p.value()?));
                        Ok(())
                    })?;
                    Ok(Json::Obj(v))
                }
                _ => {
                    let start = self.i;
                    while self.i < self.b.len() && b"-+.eE0123456789".contains(&self.b[self.i]) {
                        self.i += 1;
                    }
                    let t = std::str::from_utf8(&self.b[start..self.i]).unwrap();
                    let ok = !t.is_empty()
                        && !t.starts_with('+')
                        && !t.starts_with('.')
                        && !t.ends_with('.');
                    match t.parse::<f64>() {
                        Ok(n) if ok => Ok(Json::Num(n)),
                        _ => Err(format!("bad number {t:?} at {start}")),
                    }
                }
            }
        }
        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out = String::new();
            loop {
                let c = *self.b.get(self.i).ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => return Ok(out),
                    b'\\' => {
                        let e = *self.b.get(self.i).ok_or("bad escape")?;
                        self.i += 1;
                        match e {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'b' => out.push('\u{08}'),
                            b'f' => out.push('\u{0c}'),
                            b'u' => {
                                let h = std::str::from_utf8(
                                    self.b.get(self.i..self.i + 4).ok_or("short \\u")?,
                                )
                                .map_err(|e| e.to_string())?;
                                let n = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                out.push(char::from_u32(n).ok_or("bad \\u")?);
                                self.i += 4;
                            }
                            _ => return Err(format!("bad escape at {}", self.i)),
                        }
                    }
                    c if c < 0x20 => return Err(format!("raw control character at {}", self.i)),
                    _ => {
                        // Copy the whole UTF-8 sequence.
                        let start = self.i - 1;
                        let len = match c {
                            0xf0.. => 4,
                            0xe0.. => 3,
                            0xc0.. => 2,
                            _ => 1,
                        };
                        self.i = start + len;
                        out.push_str(
                            std::str::from_utf8(&self.b[start..self.i])
                                .map_err(|e| e.to_string())?,
                        );
                    }
                }
            }
        }
    }

    /// `v["a"]["b"]...`
    pub fn get<'a>(v: &'a Json, path: &[&str]) -> Option<&'a Json> {
        path.iter().try_fold(v, |v, k| v.get(k))
    }

    // The accessors serve tests/compare_lab.rs; the unit tests match on variants instead.
    #[allow(dead_code)]
    impl Json {
        /// `self[key]`, for an object.
        pub fn get(&self, key: &str) -> Option<&Json> {
            match self {
                Json::Obj(fields) => fields.iter().find(|(f, _)| f == key).map(|(_, j)| j),
                _ => None,
            }
        }
        pub fn str(&self) -> Option<&str> {
            match self {
                Json::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn num(&self) -> Option<f64> {
            match self {
                Json::Num(n) => Some(*n),
                _ => None,
            }
        }
        pub fn bool(&self) -> Option<bool> {
            match self {
                Json::Bool(b) => Some(*b),
                _ => None,
            }
        }
        pub fn arr(&self) -> Option<&[Json]> {
            match self {
                Json::Arr(v) => Some(v),
                _ => None,
            }
        }
    }
}
