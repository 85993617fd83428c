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

pub fn make(source: &[u8], bw: u32, bh: u32, method: Method, max_pixels: u64) -> Result<Thumbnail, ThumbnailError> {
    let reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let format = reader.format().ok_or(ThumbnailError::Unsupported)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP) {
        return Err(ThumbnailError::Unsupported);
    }
    let mut decoder = reader.into_decoder().map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    img.apply_orientation(orientation);

    let (w, h) = (img.width(), img.height());
    let (tw, th) = target_size(w, h, bw, bh, method);
    // JPEG in, JPEG out (no alpha to keep); everything else becomes PNG to keep transparency.
    let jpeg = format == ImageFormat::Jpeg;
    let src = if jpeg { DynamicImage::ImageRgb8(img.to_rgb8()) } else { DynamicImage::ImageRgba8(img.to_rgba8()) };
    let pixel = if jpeg { PixelType::U8x3 } else { PixelType::U8x4 };
    let mut dst = Image::new(tw, th, pixel);
    let mut opts = ResizeOptions::new();
    if method == Method::Crop {
        opts = opts.fit_into_destination(Some((0.5, 0.5)));
    }
    Resizer::new().resize(&src, &mut dst, &opts).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let out: DynamicImage = if jpeg {
        DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(tw, th, dst.into_vec()).ok_or_else(|| ThumbnailError::Broken("resize".into()))?,
        )
    } else {
        DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(tw, th, dst.into_vec())
                .ok_or_else(|| ThumbnailError::Broken("resize".into()))?,
        )
    };
    let mut bytes = Vec::new();
    let (fmt, ctype) = if jpeg { (ImageFormat::Jpeg, "image/jpeg") } else { (ImageFormat::Png, "image/png") };
    out.write_to(&mut Cursor::new(&mut bytes), fmt).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    Ok(Thumbnail { bytes, content_type: ctype, width: tw, height: th })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let t = make(&encoded(640, 480, fmt), 96, 96, Method::Crop, 1 << 24)
                .unwrap_or_else(|e| panic!("{fmt:?}: {e:?}"));
            assert_eq!((t.width, t.height), (96, 96));
            let back = image::load_from_memory(&t.bytes).unwrap();
            assert_eq!((back.width(), back.height()), (96, 96));
            assert_eq!(t.content_type, if fmt == ImageFormat::Jpeg { "image/jpeg" } else { "image/png" });
        }
    }

    #[test]
    fn refuses_bombs_and_non_images() {
        assert_eq!(
            make(&encoded(300, 300, ImageFormat::Png), 32, 32, Method::Scale, 10_000).unwrap_err(),
            ThumbnailError::TooLarge
        );
        assert_eq!(
            make(b"just some text, not an image", 32, 32, Method::Scale, 1 << 24).unwrap_err(),
            ThumbnailError::Unsupported
        );
    }
}

/// Most frames an animated thumbnail keeps; longer animations are cut short.
const MAX_FRAMES: usize = 300;

/// An animated thumbnail of an animated GIF or WebP, or `None` when the source is not animated
/// (the caller then makes a still one). Every frame is decoded within the pixel budget. The
/// thumbnail is an animated GIF either way: the `image` crate cannot encode animated WebP, and
/// every client plays GIF.
pub fn make_animated(
    source: &[u8],
    bw: u32,
    bh: u32,
    method: Method,
    max_pixels: u64,
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
    let ((w, h), frames) = match format {
        ImageFormat::Gif => {
            let decoder = GifDecoder::new(Cursor::new(source)).map_err(broken)?;
            let dims = decoder.dimensions();
            if dims.0 as u64 * dims.1 as u64 > max_pixels {
                return Err(ThumbnailError::TooLarge);
            }
            (dims, decoder.into_frames())
        }
        ImageFormat::WebP => {
            let decoder = WebPDecoder::new(Cursor::new(source)).map_err(broken)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            let dims = decoder.dimensions();
            if dims.0 as u64 * dims.1 as u64 > max_pixels {
                return Err(ThumbnailError::TooLarge);
            }
            (dims, decoder.into_frames())
        }
        _ => return Ok(None),
    };
    let frames: Vec<Frame> = frames.take(MAX_FRAMES).collect::<Result<_, _>>().map_err(broken)?;
    if frames.len() < 2 {
        return Ok(None);
    }
    if (w as u64 * h as u64).saturating_mul(frames.len() as u64) > max_pixels.saturating_mul(4) {
        return Err(ThumbnailError::TooLarge);
    }
    let (tw, th) = target_size(w, h, bw, bh, method);
    let mut resizer = Resizer::new();
    let mut opts = ResizeOptions::new();
    if method == Method::Crop {
        opts = opts.fit_into_destination(Some((0.5, 0.5)));
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
        for frame in frames {
            let delay = frame.delay();
            let src = DynamicImage::ImageRgba8(frame.into_buffer());
            let mut dst = Image::new(tw, th, PixelType::U8x4);
            resizer.resize(&src, &mut dst, &opts).map_err(|e| ThumbnailError::Broken(e.to_string()))?;
            let buf = image::RgbaImage::from_raw(tw, th, dst.into_vec())
                .ok_or_else(|| ThumbnailError::Broken("resize".into()))?;
            encoder
                .encode_frame(Frame::from_parts(buf, 0, 0, delay))
                .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
        }
    }
    Ok(Some(Thumbnail { bytes, content_type: "image/gif", width: tw, height: th }))
}

#[cfg(test)]
mod animated_tests {
    use super::*;

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
        let t = make_animated(&animated_gif(200, 100, 5), 96, 96, Method::Scale, 1 << 24).unwrap().expect("animated");
        assert_eq!(t.content_type, "image/gif");
        let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&t.bytes)).unwrap().into_frames().count();
        assert_eq!(frames, 5);
        assert_eq!((t.width, t.height), (96, 48));
        // Animated WebP becomes an animated GIF with every frame.
        let webp = include_bytes!("../../testdata/animated.webp");
        let t = make_animated(webp, 32, 32, Method::Crop, 1 << 24).unwrap().expect("animated webp");
        assert_eq!((t.content_type, t.width, t.height), ("image/gif", 32, 32));
        let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&t.bytes)).unwrap().into_frames();
        let colours: Vec<[u8; 4]> = frames.map(|f| f.unwrap().into_buffer().get_pixel(16, 16).0).collect();
        assert_eq!(colours.len(), 3);
        assert!(colours[0][0] > 200 && colours[1][1] > 200 && colours[2][2] > 200, "{colours:?}");
        // A still image is not animated: the caller makes an ordinary thumbnail.
        assert!(make_animated(&animated_gif(50, 50, 1), 32, 32, Method::Crop, 1 << 24).unwrap().is_none());
    }
}
