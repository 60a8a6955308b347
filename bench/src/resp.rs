//! An incremental reader of Redis's replies (RESP2), for the replies that are not a
//! stream of pushed lines: `XREAD`, `XREVRANGE` and `XADD`. Each byte is looked at
//! once however the reply is split across reads, so a reply of a megabyte costs the
//! load generator no more than the same bytes of pub/sub.

use std::io;

/// One piece of a reply, as [`Resp::parse`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A bulk string's bytes.
    Bulk(&'a [u8]),
    /// A simple string or an integer (`+OK`, `:1`), with its marker.
    Simple(&'a [u8]),
    /// An error reply (`-ERR ...`), with its marker.
    Error(&'a [u8]),
    /// A whole top-level reply has ended.
    End,
}

/// Where the reader is in the replies: the elements still to come in every array
/// being read, and the length of the bulk string whose bytes are awaited.
#[derive(Debug, Default)]
pub struct Resp {
    open: Vec<i64>,
    bulk: Option<usize>,
}

impl Resp {
    /// A reader at the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every whole piece in `buf`, calling `found` for each, and returns how many
    /// bytes it used (the rest is the start of a piece still incomplete: pass it
    /// again, with what follows).
    ///
    /// # Errors
    /// When `buf` is not RESP.
    pub fn parse(&mut self, buf: &[u8], found: &mut dyn FnMut(Item<'_>)) -> io::Result<usize> {
        let mut pos = 0;
        loop {
            if let Some(len) = self.bulk {
                if buf.len() - pos < len + 2 {
                    return Ok(pos);
                }
                found(Item::Bulk(&buf[pos..pos + len]));
                pos += len + 2;
                self.bulk = None;
                self.value_done(found);
                continue;
            }
            let Some(end) = memchr::memchr(b'\n', &buf[pos..]) else {
                return Ok(pos);
            };
            let line = &buf[pos..pos + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos += end + 1;
            match line.first() {
                Some(b'*') => match length(line)? {
                    n if n > 0 => self.open.push(n),
                    // An empty or null array is a whole value.
                    _ => self.value_done(found),
                },
                Some(b'$') => match length(line)? {
                    n if n >= 0 => self.bulk = Some(n as usize),
                    _ => self.value_done(found),
                },
                Some(b'+' | b':') => {
                    found(Item::Simple(line));
                    self.value_done(found);
                }
                Some(b'-') => {
                    found(Item::Error(line));
                    self.value_done(found);
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a Redis reply: {:?}", String::from_utf8_lossy(line)),
                    ));
                }
            }
        }
    }

    /// A value ended: so may the arrays it closes, and the reply.
    fn value_done(&mut self, found: &mut dyn FnMut(Item<'_>)) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
        found(Item::End);
    }
}

fn length(line: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad length in {:?}", String::from_utf8_lossy(line)),
            )
        })
}

/// Whether `bytes` is a stream entry's ID (`1700000000000-0`).
pub fn is_stream_id(bytes: &[u8]) -> bool {
    let mut parts = bytes.splitn(2, |&b| b == b'-');
    let (Some(ms), Some(seq)) = (parts.next(), parts.next()) else {
        return false;
    };
    !ms.is_empty() && !seq.is_empty() && ms.iter().chain(seq).all(u8::is_ascii_digit)
}

/// Appends a command as Redis reads it (an array of bulk strings).
pub fn command(out: &mut bytes::BytesMut, args: &[&[u8]]) {
    use bytes::BufMut;
    out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.put_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(resp: &mut Resp, buf: &[u8]) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let used = resp
            .parse(buf, &mut |item| {
                seen.push(match item {
                    Item::Bulk(b) => format!("bulk {}", String::from_utf8_lossy(b)),
                    Item::Simple(b) => format!("simple {}", String::from_utf8_lossy(b)),
                    Item::Error(b) => format!("error {}", String::from_utf8_lossy(b)),
                    Item::End => "end".to_owned(),
                });
            })
            .unwrap();
        (seen, used)
    }

    const XREAD: &[u8] = b"*1\r\n*2\r\n$5\r\nbench\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$3\r\nabc\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$3\r\ndef\r\n";

    #[test]
    fn a_reply_split_anywhere_gives_the_same_pieces() {
        let (whole, used) = items(&mut Resp::new(), XREAD);
        assert_eq!(used, XREAD.len());
        assert_eq!(
            whole,
            [
                "bulk bench",
                "bulk 1-0",
                "bulk p",
                "bulk abc",
                "bulk 1-1",
                "bulk p",
                "bulk def",
                "end"
            ]
        );
        for split in 0..XREAD.len() {
            let mut resp = Resp::new();
            let (mut seen, used) = items(&mut resp, &XREAD[..split]);
            let rest = [&XREAD[used..split], &XREAD[split..]].concat();
            let (more, used_rest) = items(&mut resp, &rest);
            assert_eq!(used_rest, rest.len());
            seen.extend(more);
            assert_eq!(seen, whole, "split at {split}");
        }
    }

    #[test]
    fn replies_follow_each_other() {
        let buf = b"$3\r\n1-0\r\n-ERR no\r\n*-1\r\n*0\r\n:5\r\n$-1\r\n";
        let (seen, used) = items(&mut Resp::new(), buf);
        assert_eq!(used, buf.len());
        assert_eq!(
            seen,
            [
                "bulk 1-0",
                "end",
                "error -ERR no",
                "end",
                "end",
                "end",
                "simple :5",
                "end",
                "end"
            ]
        );
        assert!(Resp::new().parse(b"hello\r\n", &mut |_| {}).is_err());
    }

    #[test]
    fn stream_ids_and_commands() {
        assert!(is_stream_id(b"1700000000000-0"));
        assert!(!is_stream_id(b"bench"));
        assert!(!is_stream_id(b"1-"));
        assert!(!is_stream_id(b"P0000"));
        let mut out = bytes::BytesMut::new();
        command(&mut out, &[b"XREAD", b"STREAMS", b"bench", b"0-0"]);
        assert_eq!(
            &out[..],
            b"*4\r\n$5\r\nXREAD\r\n$7\r\nSTREAMS\r\n$5\r\nbench\r\n$3\r\n0-0\r\n"
        );
    }
}
