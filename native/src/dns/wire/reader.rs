//! A bounds-checked cursor: every read of a message goes through it and
//! fails with a [`WireError`] naming what was read and where.

use super::{read_name, NameBuf, WireError};

/// A bounds-checked cursor over a message.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(msg: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { msg, pos }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = *self.msg.get(self.pos).ok_or(WireError { what, at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.msg.len()).ok_or(WireError { what, at: self.pos })?;
        let b = &self.msg[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// Reads a possibly compressed name into `out` (uncompressed wire form).
    pub fn name(&mut self, out: &mut NameBuf, what: &'static str) -> Result<(), WireError> {
        self.pos = read_name(self.msg, self.pos, out, what)?;
        Ok(())
    }
}
