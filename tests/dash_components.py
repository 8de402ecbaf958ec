"""Test helper: find a Dash component by id in a layout tree."""


def find_component(component, cid: str):
    """The component with id ``cid`` under ``component`` (depth first), or None."""
    if getattr(component, "id", None) == cid:
        return component
    kids = getattr(component, "children", None)
    for k in kids if isinstance(kids, list | tuple) else [kids]:
        if k is not None and not isinstance(k, str):
            hit = find_component(k, cid)
            if hit is not None:
                return hit
    return None
