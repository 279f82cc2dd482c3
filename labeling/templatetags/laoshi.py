"""Template helpers: safe Markdown for guidelines."""

import markdown as markdown_lib
import nh3
from django import template
from django.utils.safestring import mark_safe

register = template.Library()

_ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "code",
    "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}


@register.filter
def render_markdown(text: str) -> str:
    """Render Markdown written by a lead to HTML with every unsafe tag and attribute removed."""
    html = markdown_lib.markdown(text or "", extensions=["tables", "fenced_code"])
    cleaned = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(cleaned)  # noqa: S308 - sanitized by nh3 above


@register.filter
def get_item(mapping, key):
    """Return mapping[key] or None (for dicts keyed by completion id)."""
    if mapping is None:
        return None
    return mapping.get(key) if hasattr(mapping, "get") else None
