//! The satisfaction plot as a PNG, with no drawing or image library: lines on an RGB canvas, a
//! 5×7 bitmap font for the labels, and a PNG written with stored (uncompressed) deflate blocks.

/// Canvas size.
const W: usize = 800;
const H: usize = 420;
/// Plot area inside the canvas.
const LEFT: usize = 60;
const RIGHT: usize = 280;
const TOP: usize = 30;
const BOTTOM: usize = 50;

const COLORS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// 5×7 glyphs, one byte per row (the low 5 bits, most significant bit leftmost).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'j' => [2, 0, 6, 2, 2, 18, 12],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'q' => [0, 0, 13, 19, 15, 1, 1],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' | '_' => [0, 0, 0, 31, 0, 0, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        _ => [0; 7],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line `width` pixels thick (Bresenham, with a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], width: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..width {
                for oy in 0..width {
                    self.set(x + ox - width / 2, y + oy - width / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at scale 2, its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) != 0 {
                        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(x + i as i64 * 12 + col * 2 + ox, y + row as i64 * 2 + oy, c);
                        }
                    }
                }
            }
        }
    }
}

/// A line per series of the fraction of sessions whose first answer met the preference, by
/// session number (values in [0, 1]); `title` on top.
pub fn satisfaction_png(title: &str, series: &[(String, Vec<f64>)]) -> Vec<u8> {
    let mut c = Canvas::new();
    let black = [0, 0, 0];
    let grey = [220, 220, 220];
    let (pw, ph) = ((W - LEFT - RIGHT) as i64, (H - TOP - BOTTOM) as i64);
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let xy = |i: usize, v: f64| {
        let x = LEFT as i64 + (i as i64 * pw) / (n as i64 - 1);
        let y = TOP as i64 + ph - (v.clamp(0.0, 1.0) * ph as f64).round() as i64;
        (x, y)
    };
    for q in 0..=4 {
        let (_, y) = xy(0, q as f64 / 4.0);
        c.line((LEFT as i64, y), (LEFT as i64 + pw, y), grey, 1);
        c.text(8, y - 7, &format!("{:.2}", q as f64 / 4.0), black);
    }
    c.line(
        (LEFT as i64, TOP as i64),
        (LEFT as i64, TOP as i64 + ph),
        black,
        1,
    );
    c.line(
        (LEFT as i64, TOP as i64 + ph),
        (LEFT as i64 + pw, TOP as i64 + ph),
        black,
        1,
    );
    let step = n.div_ceil(10).max(1);
    for i in (0..n).step_by(step) {
        let (x, y) = xy(i, 0.0);
        c.line((x, y), (x, y + 5), black, 1);
        c.text(x - 6, y + 10, &(i + 1).to_string(), black);
    }
    c.text(LEFT as i64 + pw / 2 - 42, H as i64 - 20, "session", black);
    c.text(LEFT as i64, 6, title, black);
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        for (i, w) in values.windows(2).enumerate() {
            c.line(xy(i, w[0]), xy(i + 1, w[1]), color, 2);
        }
        let ly = TOP as i64 + 10 + k as i64 * 22;
        let lx = (W - RIGHT) as i64 + 14;
        c.line((lx, ly + 7), (lx + 20, ly + 7), color, 3);
        c.text(lx + 26, ly, name, black);
    }
    encode_png(&c.px)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit RGB PNG of the canvas; the image data is zlib with stored blocks.
fn encode_png(px: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(H * (W * 3 + 1));
    for row in px.chunks_exact(W * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(W as u32).to_be_bytes());
    ihdr.extend_from_slice(&(H as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_png_s() {
        // The CRC of "IEND" with no data, as every PNG ends with it.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn a_plot_is_a_well_formed_png_with_the_lines_drawn() {
        let png = satisfaction_png(
            "student",
            &[
                ("combined".into(), vec![0.0, 0.5, 1.0]),
                ("rl".into(), vec![0.0, 0.0, 0.5]),
            ],
        );
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            W as u32
        );
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The first series' colour appears in the image data (stored blocks keep bytes as is).
        let blue = COLORS[0];
        assert!(png.windows(3).any(|w| w == blue));
    }
}
