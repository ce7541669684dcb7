"""Unicode-aware, vocabulary-free splitting of text into tokens."""

import unicodedata

import regex

# Scripts written without spaces between words: each character (with its
# combining marks) is a token, as BERT does for Chinese.
_UNSPACED = (
    r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\u3005"
    r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
)
_TOKEN_PATTERN = regex.compile(
    rf"(?V1)[{_UNSPACED}]\p{{M}}*"
    # A word: letters, digits and underscore, with their combining marks
    # (Devanagari vowel signs and viramas are marks, not letters).
    rf"|[[\p{{L}}\p{{N}}_]--[{_UNSPACED}]][[\p{{L}}\p{{M}}\p{{N}}_]--[{_UNSPACED}]]*"
    # Anything else visible (punctuation, symbols, emoji) is one token;
    # control and format characters (zero-width joiners) are dropped.
    r"|[^\s\p{L}\p{M}\p{N}\p{C}]\p{M}*"
)


def normalize(text, lowercase=True):
    """NFKC-normalizes `text`, case-folded when `lowercase` is set."""
    text = unicodedata.normalize("NFKC", text)
    return text.casefold() if lowercase else text


def tokenize(text, max_tokens=None, lowercase=True):
    """Splits `text` into tokens.

    Words of space-separated scripts (Latin, Cyrillic, Arabic, Devanagari,
    Hangul...) are kept whole; characters of Chinese, Japanese, Thai, Lao,
    Khmer and Myanmar text are one token each; each punctuation mark or
    symbol is a token; whitespace, control and format characters are
    dropped. An empty or whitespace-only text gives no tokens.

    Args:
        text: str. The text to split.
        max_tokens: int or `None`. Stop after this many tokens, so that a
            very long text costs no more than a short one.
        lowercase: bool. Case-fold before splitting.

    Returns:
        A list of str.

    Example:

    >>> tokenize("Où habite-t-elle ? 東京に住む")
    ['où', 'habite', '-', 't', '-', 'elle', '?', '東', '京', 'に', '住', 'む']
    """
    if not isinstance(text, str):
        raise TypeError(
            f"tokenize expects a str. Received: {type(text).__name__} "
            f"{text!r:.50}"
        )
    if max_tokens is not None and max_tokens < 1:
        return []
    # Normalizing a huge text would dominate; the tokens kept need at most
    # a bounded prefix. 64 characters per token is far above any language.
    if max_tokens is not None and len(text) > 64 * max_tokens:
        text = text[: 64 * max_tokens]
    text = normalize(text, lowercase)
    tokens = []
    for match in _TOKEN_PATTERN.finditer(text):
        tokens.append(match.group())
        if max_tokens is not None and len(tokens) >= max_tokens:
            break
    return tokens
