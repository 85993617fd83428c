//! Making thumbnails: decode (bounded by a pixel budget against decompression bombs), apply
//! EXIF orientation, resize with `fast_image_resize`, encode. Pure and synchronous: callers run
//! it on a blocking thread so the async runtime never waits on an image.

use std::io::Cursor;

use fast_image_resize::{images::Image, PixelType, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Fill the box exactly, cropping what sticks out.
    Crop,
    /// Fit inside the box, keeping the aspect ratio.
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

#[derive(Debug)]
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ThumbnailError {
    /// Not an image format we thumbnail (or not an image at all).
    Unsupported,
    /// Over the pixel budget.
    TooLarge,
    Broken(String),
}

/// The size to produce for a source of `w`×`h` asked to fit `bw`×`bh`; never larger than the source.
pub fn target_size(w: u32, h: u32, bw: u32, bh: u32, method: Method) -> (u32, u32) {
    let (w, h, bw, bh) = (w.max(1) as f64, h.max(1) as f64, bw.max(1) as f64, bh.max(1) as f64);
    match method {
        Method::Scale => {
            let r = (bw / w).min(bh / h).min(1.0);
            (((w * r).round() as u32).max(1), ((h * r).round() as u32).max(1))
        }
        Method::Crop => {
            // The box, shrunk (keeping its aspect) until it fits inside the source.
            let r = (w / bw).min(h / bh).min(1.0);
            (((bw * r).round() as u32).max(1), ((bh * r).round() as u32).max(1))
        }
    }
}

/// What a thumbnail job may spend. Both bounds are checked from the image's header, before a
/// single pixel is decoded, and the decoders are told the memory bound as well (`Limits`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Images (or animation canvases) with more pixels are refused.
    pub max_pixels: u64,
    /// Bytes of decoded pixels one job may hold at once.
    pub max_memory: u64,
}

impl Budget {
    fn limits(&self, bytes: u64) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_alloc = Some(bytes.min(self.max_memory));
        l
    }
}

/// What decoding an image will hold in memory, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub width: u32,
    pub height: u32,
    /// Peak bytes of a still thumbnail (decoded image, conversion, resize buffers).
    pub still: u64,
    /// Peak bytes of an animated one, when the format can animate: GIF and WebP decoders keep a
    /// composited canvas beside each frame they hand out.
    pub animated: Option<u64>,
}

fn supported(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)
}

/// Reads the header of `source` and says what thumbnailing it would cost.
pub fn cost(source: &[u8]) -> Result<Cost, ThumbnailError> {
    let reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let format = reader.format().ok_or(ThumbnailError::Unsupported)?;
    if !supported(format) {
        return Err(ThumbnailError::Unsupported);
    }
    let decoder = reader.into_decoder().map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let px = width as u64 * height as u64;
    let native = decoder.total_bytes();
    // Decoded as it is stored, then converted to RGB/RGBA unless it already is (JPEG, most PNGs).
    let converted = if matches!(decoder.color_type(), image::ColorType::Rgb8 | image::ColorType::Rgba8) {
        0
    } else {
        px.saturating_mul(4)
    };
    let canvas = px.saturating_mul(4);
    let (still, animated) = match format {
        // A still GIF or WebP is the first frame composited on a canvas.
        ImageFormat::Gif | ImageFormat::WebP => (canvas.saturating_mul(2), Some(canvas.saturating_mul(3))),
        // The JPEG decoder reads its whole input into a buffer of its own first.
        ImageFormat::Jpeg => (native.saturating_add(converted).saturating_add(source.len() as u64), None),
        _ => (native.saturating_add(converted), None),
    };
    Ok(Cost { width, height, still, animated })
}

fn orientation_swaps(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// Resizes an RGBA or RGB image to `tw`×`th`. Alpha is premultiplied in place (no copy of the
/// source), the small result divided back.
fn resize(src: &mut DynamicImage, tw: u32, th: u32, method: Method) -> Result<DynamicImage, ThumbnailError> {
    let broken = |e: &dyn std::fmt::Display| ThumbnailError::Broken(e.to_string());
    let mut opts = ResizeOptions::new().use_alpha(false);
    if method == Method::Crop {
        opts = opts.fit_into_destination(Some((0.5, 0.5)));
    }
    let alpha = src.color().has_alpha();
    let pixel = if alpha { PixelType::U8x4 } else { PixelType::U8x3 };
    let mul_div = fast_image_resize::MulDiv::new();
    if alpha {
        mul_div.multiply_alpha_inplace(src).map_err(|e| broken(&e))?;
    }
    let mut dst = Image::new(tw, th, pixel);
    Resizer::new().resize(&*src, &mut dst, &opts).map_err(|e| broken(&e))?;
    if alpha {
        mul_div.divide_alpha_inplace(&mut dst).map_err(|e| broken(&e))?;
        let buf = image::RgbaImage::from_raw(tw, th, dst.into_vec()).ok_or_else(|| broken(&"resize"))?;
        Ok(DynamicImage::ImageRgba8(buf))
    } else {
        let buf = image::RgbImage::from_raw(tw, th, dst.into_vec()).ok_or_else(|| broken(&"resize"))?;
        Ok(DynamicImage::ImageRgb8(buf))
    }
}

pub fn make(source: &[u8], bw: u32, bh: u32, method: Method, budget: Budget) -> Result<Thumbnail, ThumbnailError> {
    let cost = cost(source)?;
    if cost.width as u64 * cost.height as u64 > budget.max_pixels || cost.still > budget.max_memory {
        return Err(ThumbnailError::TooLarge);
    }
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let format = reader.format().ok_or(ThumbnailError::Unsupported)?;
    reader.limits(budget.limits(cost.still));
    let mut decoder = reader.into_decoder().map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    // JPEG in, JPEG out (no alpha to keep); everything else becomes PNG to keep transparency.
    let jpeg = format == ImageFormat::Jpeg;
    let mut src =
        if jpeg { DynamicImage::ImageRgb8(img.into_rgb8()) } else { DynamicImage::ImageRgba8(img.into_rgba8()) };
    // Resize first and turn the small result upright, rather than rotating the full image.
    let swaps = orientation_swaps(orientation);
    let (w, h) = if swaps { (src.height(), src.width()) } else { (src.width(), src.height()) };
    let (tw, th) = target_size(w, h, bw, bh, method);
    let (rw, rh) = if swaps { (th, tw) } else { (tw, th) };
    let mut out = resize(&mut src, rw, rh, method)?;
    drop(src);
    out.apply_orientation(orientation);
    let mut bytes = Vec::new();
    let (fmt, ctype) = if jpeg { (ImageFormat::Jpeg, "image/jpeg") } else { (ImageFormat::Png, "image/png") };
    out.write_to(&mut Cursor::new(&mut bytes), fmt).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    Ok(Thumbnail { bytes, content_type: ctype, width: tw, height: th })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const BIG: Budget = Budget { max_pixels: 1 << 24, max_memory: 1 << 30 };

    fn encoded(w: u32, h: u32, fmt: ImageFormat) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255]));
        let img = if fmt == ImageFormat::Jpeg {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8())
        } else {
            DynamicImage::ImageRgba8(img)
        };
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), fmt).unwrap();
        out
    }

    #[test]
    fn sizes() {
        assert_eq!(target_size(1000, 500, 320, 240, Method::Scale), (320, 160));
        assert_eq!(target_size(1000, 500, 96, 96, Method::Crop), (96, 96));
        assert_eq!(target_size(50, 40, 320, 240, Method::Scale), (50, 40), "never upscale");
        assert_eq!(target_size(50, 40, 96, 96, Method::Crop), (40, 40));
    }

    #[test]
    fn every_format_thumbnails() {
        for fmt in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif, ImageFormat::WebP] {
            let t =
                make(&encoded(640, 480, fmt), 96, 96, Method::Crop, BIG).unwrap_or_else(|e| panic!("{fmt:?}: {e:?}"));
            assert_eq!((t.width, t.height), (96, 96));
            let back = image::load_from_memory(&t.bytes).unwrap();
            assert_eq!((back.width(), back.height()), (96, 96));
            assert_eq!(t.content_type, if fmt == ImageFormat::Jpeg { "image/jpeg" } else { "image/png" });
        }
    }

    #[test]
    fn refuses_bombs_and_non_images() {
        assert_eq!(
            make(
                &encoded(300, 300, ImageFormat::Png),
                32,
                32,
                Method::Scale,
                Budget { max_pixels: 10_000, max_memory: 1 << 30 }
            )
            .unwrap_err(),
            ThumbnailError::TooLarge
        );
        assert_eq!(
            make(b"just some text, not an image", 32, 32, Method::Scale, BIG).unwrap_err(),
            ThumbnailError::Unsupported
        );
    }
}

/// Most frames an animated thumbnail keeps; longer animations are cut short.
const MAX_FRAMES: u64 = 300;
/// Pixels of output frames one animated thumbnail encodes at most (GIF quantisation is the
/// expensive part): 300 frames of 320×240, or 12 of 1600×1600.
const MAX_OUTPUT_PIXELS: u64 = 24_000_000;

/// An animated thumbnail of an animated GIF or WebP, or `None` when the source is not animated
/// or animating it would not fit the budget (the caller then makes a still one). Frames are
/// decoded, resized and encoded one at a time, so memory holds one canvas and one frame however
/// long the animation; canvas × frames decoded is bounded by 4 × `max_pixels`, so the CPU spent
/// is bounded too, and longer animations are cut short. The thumbnail is an animated GIF either
/// way: the `image` crate cannot encode animated WebP, and every client plays GIF.
pub fn make_animated(
    source: &[u8],
    bw: u32,
    bh: u32,
    method: Method,
    budget: Budget,
) -> Result<Option<Thumbnail>, ThumbnailError> {
    use image::{
        codecs::{
            gif::{GifDecoder, GifEncoder, Repeat},
            webp::WebPDecoder,
        },
        AnimationDecoder, Frame,
    };
    let broken = |e: image::ImageError| ThumbnailError::Broken(e.to_string());
    let format = image::guess_format(source).map_err(|_| ThumbnailError::Unsupported)?;
    let cost = match format {
        ImageFormat::Gif | ImageFormat::WebP => cost(source)?,
        _ => return Ok(None),
    };
    let px = (cost.width as u64 * cost.height as u64).max(1);
    if px > budget.max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    let Some(bytes_needed) = cost.animated.filter(|b| *b <= budget.max_memory) else { return Ok(None) };
    let (tw, th) = target_size(cost.width, cost.height, bw, bh, method);
    let max_frames = MAX_FRAMES
        .min(budget.max_pixels.saturating_mul(4) / px)
        .min(MAX_OUTPUT_PIXELS / (tw as u64 * th as u64).max(1));
    if max_frames < 2 {
        return Ok(None);
    }
    let limits = budget.limits(bytes_needed);
    let frames = match format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(Cursor::new(source)).map_err(broken)?;
            decoder.set_limits(limits).map_err(broken)?;
            decoder.into_frames()
        }
        _ => {
            let mut decoder = WebPDecoder::new(Cursor::new(source)).map_err(broken)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            decoder.set_limits(limits).map_err(broken)?;
            decoder.into_frames()
        }
    };
    let mut bytes = Vec::new();
    let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
    encoder.set_repeat(Repeat::Infinite).map_err(broken)?;
    // The first frame waits until a second one shows the source really is animated.
    let mut first: Option<Frame> = None;
    let mut count = 0;
    for frame in frames.take(max_frames as usize) {
        let frame = frame.map_err(broken)?;
        let delay = frame.delay();
        let mut src = DynamicImage::ImageRgba8(frame.into_buffer());
        let small = resize(&mut src, tw, th, method)?.into_rgba8();
        drop(src);
        let small = Frame::from_parts(small, 0, 0, delay);
        count += 1;
        if count == 1 {
            first = Some(small);
            continue;
        }
        if let Some(f) = first.take() {
            encoder.encode_frame(f).map_err(broken)?;
        }
        encoder.encode_frame(small).map_err(broken)?;
    }
    drop(encoder);
    if count < 2 {
        return Ok(None);
    }
    Ok(Some(Thumbnail { bytes, content_type: "image/gif", width: tw, height: th }))
}

#[cfg(test)]
mod animated_tests {
    use super::{tests::BIG, *};

    pub fn animated_gif(w: u32, h: u32, frames: u32) -> Vec<u8> {
        use image::{codecs::gif::GifEncoder, Delay, Frame};
        let mut out = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut out);
            for i in 0..frames {
                let img = image::RgbaImage::from_fn(w, h, |x, _| image::Rgba([(x * 3 + i * 40) as u8, 0, 0, 255]));
                enc.encode_frame(Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(100, 1))).unwrap();
            }
        }
        out
    }

    #[test]
    fn animated_gifs_stay_animated() {
        use image::AnimationDecoder;
        let t = make_animated(&animated_gif(200, 100, 5), 96, 96, Method::Scale, BIG).unwrap().expect("animated");
        assert_eq!(t.content_type, "image/gif");
        let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&t.bytes)).unwrap().into_frames().count();
        assert_eq!(frames, 5);
        assert_eq!((t.width, t.height), (96, 48));
        // Animated WebP becomes an animated GIF with every frame.
        let webp = include_bytes!("../../testdata/animated.webp");
        let t = make_animated(webp, 32, 32, Method::Crop, BIG).unwrap().expect("animated webp");
        assert_eq!((t.content_type, t.width, t.height), ("image/gif", 32, 32));
        let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&t.bytes)).unwrap().into_frames();
        let colours: Vec<[u8; 4]> = frames.map(|f| f.unwrap().into_buffer().get_pixel(16, 16).0).collect();
        assert_eq!(colours.len(), 3);
        assert!(colours[0][0] > 200 && colours[1][1] > 200 && colours[2][2] > 200, "{colours:?}");
        // A still image is not animated: the caller makes an ordinary thumbnail.
        assert!(make_animated(&animated_gif(50, 50, 1), 32, 32, Method::Crop, BIG).unwrap().is_none());
    }
}
