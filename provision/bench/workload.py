"""The requests RAGFlow sends, at the size it sends them: embedding batches of 16 chunks of 300-500 tokens,
rerank of one query against a retrieval's top 64 chunks (untruncated), and a streamed chat whose prompt
holds the retrieved chunks (RAGFlow's knowledge-base prompt).

The chunks are made up, but deterministic (a seeded generator), varied (no two requests send the same
batch, so no cache answers them) and shaped like prose: sentences of common and technical words.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

EMBED_BATCH = 16  # RAGFlow embeds chunks 16 at a time (the OpenAI-compatible client's batch)
RERANK_TOP_K = 64  # RAGFlow reranks the retrieval's top-k (its default top_k 1024 is cut to the page first)
CHAT_CHUNKS = 6  # chunks in the chat prompt (RAGFlow's default top_n)
CHAT_MAX_TOKENS = 128
CHUNK_WORDS = (230, 380)  # ~300-500 tokens of English for a BERT or Qwen tokenizer
POOL = 256  # chunks made once and reused in turn

_WORDS = (
    "the of and to in is that for it as with was on be by this are from or at which an have not they has but "
    "one all were when their can there been more if will would about into than these some other its only also "
    "after time may new two first could over such most where through between under system data model request "
    "server memory cache index vector query document retrieval latency throughput batch token engine cluster "
    "worker storage network policy report customer contract invoice revenue quarter supplier shipment audit "
    "warranty clause section annex schedule payment delivery inspection maintenance procedure component safety "
    "temperature pressure valve pump sensor firmware release version configuration deployment backup recovery "
    "incident review approval budget forecast margin inventory region market product service support ticket"
).split()


@dataclass(frozen=True)
class Workload:
    embed_batch: int = EMBED_BATCH
    rerank_top_k: int = RERANK_TOP_K
    chat_chunks: int = CHAT_CHUNKS
    chat_max_tokens: int = CHAT_MAX_TOKENS
    chunk_words: tuple[int, int] = CHUNK_WORDS
    seed: int = 20250101

    def describe(self, role: str) -> dict:
        data = asdict(self)
        keep = {"embedding": ("embed_batch", "chunk_words"), "rerank": ("rerank_top_k", "chunk_words"),
                "chat": ("chat_chunks", "chat_max_tokens", "chunk_words")}[role]
        found = {k: data[k] for k in keep}
        found["chunk_words"] = "-".join(map(str, self.chunk_words))
        return found | ({"stream": True} if role == "chat" else {})


def make_chunks(count: int = POOL, words: tuple[int, int] = CHUNK_WORDS, seed: int = 20250101) -> list[str]:
    """`count` chunks of prose, each of words[0]..words[1] words, the same for the same seed."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        target = rng.randint(*words)
        sentences, total = [], 0
        while total < target:
            length = min(rng.randint(8, 24), target - total)
            sentence = [rng.choice(_WORDS) for _ in range(max(length, 1))]
            sentence[0] = sentence[0].capitalize()
            if rng.random() < 0.3:  # numbers and identifiers, as documents have them
                sentence.insert(rng.randrange(len(sentence)), f"{rng.randint(2, 9999)}")
            sentences.append(" ".join(sentence) + ".")
            total += length
        chunks.append(" ".join(sentences))
    return chunks


QUESTIONS = [
    "What does the maintenance procedure say about the pressure valve?",
    "Which supplier delivered the shipment that failed inspection, and why?",
    "Summarise the warranty clause and the payment schedule.",
    "How is the backup and recovery of the index configured?",
]

# RAGFlow's knowledge-base system prompt (its default dialog prompt), with the retrieved chunks in it.
KB_PROMPT = (
    "You are an intelligent assistant. Please summarize the content of the knowledge base to answer the question. "
    "Please list the data in the knowledge base and answer in detail. When all knowledge base content is irrelevant "
    "to the question, your answer must include the sentence \"The answer you are looking for is not found in the "
    "knowledge base!\" Answers need to consider chat history.\n      Here is the knowledge base:\n      {knowledge}\n"
    "      The above is the knowledge base."
)


class Requests:
    """The request bodies, in turn: request n of an endpoint takes the next chunks of the pool."""

    def __init__(self, workload: Workload | None = None):
        self.workload = workload or Workload()
        self.chunks = make_chunks(POOL, self.workload.chunk_words, self.workload.seed)

    def _take(self, n: int, count: int) -> list[str]:
        start = (n * count) % len(self.chunks)
        return [self.chunks[(start + i) % len(self.chunks)] for i in range(count)]

    def embedding(self, uid: str, n: int) -> dict:
        return {"model": uid, "input": self._take(n, self.workload.embed_batch)}

    def rerank(self, uid: str, n: int) -> dict:
        # RAGFlow's payload (XInferenceRerank): the booleans are strings; no top_n, nothing truncated.
        return {"model": uid, "query": QUESTIONS[n % len(QUESTIONS)], "documents": self._take(n, self.workload.rerank_top_k),
                "return_documents": "true", "return_len": "true"}

    def chat(self, uid: str, n: int) -> dict:
        chunks = self._take(n, self.workload.chat_chunks)
        knowledge = "\n".join(f"------\nDocument: report-{(n + i) % 97}.pdf\nRelevant fragments as following:\n{c}"
                              for i, c in enumerate(chunks))
        return {
            "model": uid,
            "messages": [{"role": "system", "content": KB_PROMPT.format(knowledge=knowledge)},
                         {"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
            "max_tokens": self.workload.chat_max_tokens,
            "temperature": 0.1,
            "stream": True,
        }
