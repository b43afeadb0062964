"""The text layer: prompts, tokenization, classification, augmentation, label keeping and their refusals.

No torch, no Ray, no HTTP: text and labels in, engine requests (token ids) out, engine
results back into answers. `tasks.TextTasks` is the face the deployments and the Pipeline call.
"""
