"""Which tensors must lose the same channels: the ChannelGraph and its front-ends."""

from hwprune.graph_mapper.front_end import FRONT_ENDS, build_channel_graph
from hwprune.graph_mapper.types import ChannelGraph, ChannelGroup, ChannelSlice, Site

__all__ = ["FRONT_ENDS", "ChannelGraph", "ChannelGroup", "ChannelSlice", "Site", "build_channel_graph"]
