//! The framebuffer playback draws into, and the operations that change it.

/// The screen at some point of a recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
    /// `width * height` pixels, 4 bytes each (R, G, B, A).
    pub rgba: Vec<u8>,
}

impl Screen {
    fn resize(&mut self, width: u32, height: u32) {
        if (width, height) == (self.width, self.height) {
            return;
        }
        let mut next = vec![0u8; width as usize * height as usize * 4];
        for row in 0..height.min(self.height) as usize {
            let n = width.min(self.width) as usize * 4;
            let (src, dst) = (row * self.width as usize * 4, row * width as usize * 4);
            next[dst..dst + n].copy_from_slice(&self.rgba[src..src + n]);
        }
        for px in next.chunks_exact_mut(4) {
            px[3] = 255;
        }
        *self = Self {
            width,
            height,
            rgba: next,
        };
    }

    /// Draws `rgba` (`w * h` pixels) at (x, y), clipped to the screen.
    pub fn blit(&mut self, x: u32, y: u32, w: u32, h: u32, rgba: &[u8]) {
        if rgba.len() < w as usize * h as usize * 4 || x >= self.width || y >= self.height {
            return;
        }
        let cols = w.min(self.width - x) as usize;
        for row in 0..h.min(self.height - y) as usize {
            let src = row * w as usize * 4;
            let dst = ((y as usize + row) * self.width as usize + x as usize) * 4;
            self.rgba[dst..dst + cols * 4].copy_from_slice(&rgba[src..src + cols * 4]);
        }
    }

    /// The `w * h` pixels at (x, y), clipped (outside is black).
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Vec<u8> {
        let mut out = vec![0u8; w as usize * h as usize * 4];
        if x < self.width && y < self.height {
            let cols = w.min(self.width - x) as usize;
            for row in 0..h.min(self.height - y) as usize {
                let src = ((y as usize + row) * self.width as usize + x as usize) * 4;
                let dst = row * w as usize * 4;
                out[dst..dst + cols * 4].copy_from_slice(&self.rgba[src..src + cols * 4]);
            }
        }
        out
    }

    /// Applies one drawing operation.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Resize { width, height } => self.resize(*width, *height),
            Op::Rect {
                x,
                y,
                width,
                height,
                rgba,
            } => self.blit(*x, *y, *width, *height, rgba),
            Op::Copy {
                x,
                y,
                width,
                height,
                src_x,
                src_y,
            } => {
                let pixels = self.crop(*src_x, *src_y, *width, *height);
                self.blit(*x, *y, *width, *height, &pixels);
            }
            Op::Bell | Op::Text(_) => {}
        }
    }
}

/// What changed on the screen (or happened) at one recorded time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The desktop's size changed.
    Resize { width: u32, height: u32 },
    /// New pixels (`width * height` RGBA).
    Rect {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        rgba: Vec<u8>,
    },
    /// Pixels copied from elsewhere on the screen.
    Copy {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        src_x: u32,
        src_y: u32,
    },
    /// The workstation rang its bell.
    Bell,
    /// The workstation's clipboard.
    Text(String),
}
