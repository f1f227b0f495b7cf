//! Text output without allocating: `core::fmt::Write` into a caller's byte slice
//! (`SliceWriter`, which also counts what did not fit, for `snprintf`-style C functions) or into
//! a file descriptor through a small buffer (`FdWriter`). Used by the statistics report, which
//! may run inside a signal handler or an allocation.

use core::fmt;

/// Writes into `buf`; text past its end is counted in `needed` but dropped.
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    needed: usize,
}

impl<'a> SliceWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter {
            buf,
            len: 0,
            needed: 0,
        }
    }
    /// Bytes written into the slice.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Bytes the whole text takes (more than `len` when it did not fit).
    pub fn needed(&self) -> usize {
        self.needed
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        self.needed += s.len();
        Ok(())
    }
}

/// Writes to a file descriptor through a 1 KiB buffer (flushed when full and on `flush`).
/// Write errors are ignored, `errno` is kept.
pub struct FdWriter {
    fd: i32,
    buf: [u8; 1024],
    len: usize,
}

impl FdWriter {
    pub const fn new(fd: i32) -> Self {
        FdWriter {
            fd,
            buf: [0; 1024],
            len: 0,
        }
    }

    pub fn flush(&mut self) {
        let mut rest = &self.buf[..self.len];
        crate::os::keep_errno(|| {
            while !rest.is_empty() {
                // SAFETY: the buffer is valid for `rest.len()` bytes.
                let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
                if n <= 0 {
                    if n < 0 && crate::os::errno() == libc::EINTR {
                        continue;
                    }
                    return;
                }
                rest = &rest[n as usize..];
            }
        });
        self.len = 0;
    }
}

impl fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn slice_writer_keeps_what_fits_and_counts_the_rest() {
        let mut buf = [0u8; 8];
        let mut w = SliceWriter::new(&mut buf);
        write!(w, "{}-{}", 1234, "abcdef").unwrap();
        assert_eq!((w.len(), w.needed()), (8, 11));
        assert_eq!(&buf, b"1234-abc");
    }
}
